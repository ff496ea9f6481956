"""`labeler` command line: run, serve, export, track, fuse, select, preview, stats, eval,
demo, tiny-models."""

from __future__ import annotations

import argparse
import difflib
import logging
import os
import sys
from pathlib import Path

from labeler import registry
from labeler.config import JOB_FLAGS, TASK_FLAGS, SpecError, load_job_spec


def _pool_size(text: str) -> int | list[int]:
    """'4' -> 4; '1-8' -> [1, 8] (validated with the spec)."""
    low, sep, high = text.partition("-")
    try:
        return [int(low), int(high)] if sep else int(low)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: a number of actors, or MIN-MAX") from None


def _labels(text: str) -> list[str]:
    return [label.strip() for label in text.split(",") if label.strip()]


def _box(text: str) -> list[float]:
    """'x0,y0,x1,y1' -> [x0, y0, x1, y1] (pixels)."""
    try:
        box = [float(v) for v in text.split(",")]
    except ValueError:
        box = []
    if len(box) != 4:
        raise argparse.ArgumentTypeError(f"{text!r}: give X0,Y0,X1,Y1 in pixels, e.g. 40,60,120,150")
    return box


def _subset_size(text: str) -> dict:
    """'500' -> {"count": 500}; '1%' -> {"fraction": 0.01}; '0.01' -> {"fraction": 0.01}."""
    value = text.strip()
    try:
        if value.endswith("%"):
            return {"fraction": float(value[:-1]) / 100}
        if value.isdigit():
            return {"count": int(value)}
        return {"fraction": float(value)}
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: a number of inputs (500), a percentage (1%) or a fraction (0.01)") from None


def _label_and_text(text: str) -> tuple[str, str]:
    """"LABEL=TEXT" -> (label, text), both stripped."""
    label, sep, value = text.partition("=")
    if not sep or not label.strip() or not value.strip():
        raise argparse.ArgumentTypeError(f"{text!r}: give LABEL=VALUE")
    return label.strip(), value.strip()


def _tile_grid(text: str) -> list[int]:
    """'3x2' -> [3, 2]: tiles across, tiles down."""
    columns, sep, rows = text.lower().partition("x")
    if not sep or not columns.strip().isdigit() or not rows.strip().isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: give COLUMNSxROWS, e.g. 2x2 or 3x2")
    return [int(columns), int(rows)]


def _label_and_score(text: str) -> tuple[str, float]:
    label, value = _label_and_text(text)
    try:
        return label, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: the score after '=' must be a number") from None


class _ByLabel(argparse.Action):
    """A repeatable LABEL=VALUE flag -> {label: value}, or {label: [values]} with many=True
    (the spec's queries and label_thresholds); given, it replaces the spec file's mapping."""

    def __init__(self, *args, many: bool = False, **kwargs):
        self.many = many
        super().__init__(*args, **kwargs)

    def __call__(self, parser, namespace, pair, option_string=None):
        label, value = pair
        mapping = dict(getattr(namespace, self.dest) or {})
        mapping[label] = [*mapping.get(label, []), value] if self.many else value
        setattr(namespace, self.dest, mapping)


def _add_box_flags(p: argparse.ArgumentParser) -> None:
    """The flags of a detection ontology and of box filtering, for `run` and `serve` alike."""
    p.add_argument("--query", dest="queries", type=_label_and_text, action=_ByLabel, many=True,
                   metavar="LABEL=TEXT", help="detect: a text that asks for LABEL (repeat it: "
                   "several per label, the best one scores a box); e.g. car=automobile")
    p.add_argument("--label-threshold", dest="label_thresholds", type=_label_and_score,
                   action=_ByLabel, metavar="LABEL=SCORE",
                   help="detect: minimum box score of LABEL instead of --threshold (repeat it)")
    p.add_argument("--template", dest="templates", action="append", metavar="TEXT",
                   help="detect (OWLv2): a prompt template with one {} (repeat it; a query's "
                   "embedding is the mean over them): --template 'a photo of a {}.'")
    p.add_argument("--nms", choices=["none", "per-label", "all"],
                   help="detect/ground/regions: drop boxes overlapping a better one (none)")
    p.add_argument("--nms-threshold", type=float, help="IoU above which NMS drops a box (0.3)")
    p.add_argument("--max-detections", type=int, help="keep a row's best boxes only (all)")
    p.add_argument("--tiles", type=_tile_grid, metavar="COLSxROWS",
                   help="detect/ground/detect-by-example (OWLv2): label each image as "
                        "overlapping tiles too, e.g. 2x2, for small objects in large images")
    p.add_argument("--tile-overlap", type=float,
                   help="fraction of a tile its neighbour shares (0.2); needs tiles")


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", nargs="?", help="job spec YAML; flags override its fields")
    p.add_argument("--input", help="folder, glob or s3:// prefix of images")
    p.add_argument("--output", help="output folder for Parquet")
    p.add_argument("--task", help=f"one of: {', '.join(registry.TASKS)}")
    p.add_argument("--family", help=f"one of: {', '.join(registry.FAMILIES)}")
    p.add_argument("--model", help="hub id, local folder or s3:// prefix")
    p.add_argument("--revision", help="model revision (hub branch, tag or commit)")
    p.add_argument("--compile", action="store_true", default=None,
                   help="torch.compile the model's hot path (OWLv2's and Florence-2's vision "
                        "towers; the generative models' decoding step, with a static cache): "
                        "for GPU jobs of one input shape; a compile at the first batch of "
                        "each shape")
    p.add_argument("--labels", type=_labels, help='comma-separated class names: "cat,dog"')
    p.add_argument("--threshold", type=float, help="minimum box score (default 0.1)")
    _add_box_flags(p)
    p.add_argument("--prompt", help="instruction, question or phrases (Florence-2: may start "
                                    "with a task token such as <MORE_DETAILED_CAPTION>)")
    p.add_argument("--query-image", help="example image for detect-by-example")
    p.add_argument("--query-box", type=_box, metavar="X0,Y0,X1,Y1",
                   help="detect-by-example: the object to find, a box in pixels of the query "
                        "image (default: its most object-like box)")
    p.add_argument("--max-new-tokens", type=int, help="generation length limit")
    p.add_argument("--num-beams", type=int, help="beam search width (1: greedy)")
    p.add_argument("--seed", type=int, help="seed for sampling")
    p.add_argument("--preprocess", choices=["processor", "fast"],
                   help="processor: transformers' (exact); fast: batched torch ops")
    p.add_argument("--batch-size", type=int, help="images per forward pass")
    p.add_argument("--concurrency", type=_pool_size,
                   help="model actors: N, or MIN-MAX for a pool that grows with the work")
    p.add_argument("--num-gpus", type=float, help="GPUs per model actor")
    p.add_argument("--actor-cpus", type=float,
                   help="CPU cores each model actor reserves (0.5: two share a core)")
    p.add_argument("--torch-threads", type=int,
                   help="torch threads of a model actor (default: its CPUs, at least 1)")
    p.add_argument("--concurrent-batches", type=int,
                   help="batches a model actor works on at once, one on the device while "
                        "the others are postprocessed (default: 2 for OWLv2 with a GPU, "
                        "else 1)")
    p.add_argument("--max-pixels", type=int, help="refuse images with more pixels")
    p.add_argument("--decode-min-side", type=int, metavar="PIXELS",
                   help="decode images reduced, their long side no shorter than this (default "
                        "1008; whole for Qwen2-VL and Ovis2 tasks unless given)")
    p.add_argument("--subset", type=_subset_size, metavar="N|P%|F",
                   help="label a reproducible random subset only: N inputs, P percent or a "
                        "fraction F of them (a trial run; a larger one holds the smaller)")
    p.add_argument("--subset-seed", type=int, help="another seed draws another subset (0)")
    video = p.add_argument_group("video (--media video)")
    video.add_argument("--media", choices=["image", "video"], help="what the input holds")
    video.add_argument("--sample-fps", type=float, help="frames per second (default 1)")
    video.add_argument("--every-n-frames", type=int, help="every n-th frame")
    video.add_argument("--keyframes", action="store_true", default=None, help="key frames only")
    video.add_argument("--frames-per-video", type=int, help="n frames spread uniformly")
    video.add_argument("--max-frames", type=int, help="at most this many frames per video")
    video.add_argument("--min-change", type=float,
                       help="skip sampled frames that changed less than this since the last "
                            "labeled one (0..1, mean grey difference; 0.03 skips static scenes)")
    video.add_argument("--start-s", type=float, help="sample from this second on")
    video.add_argument("--end-s", type=float, help="sample up to this second")
    video.add_argument("--track", action="store_true", default=None,
                       help="detect/ground/detect-by-example: link each video's boxes across "
                            "frames into tracks (detections.track_id)")
    video.add_argument("--track-iou", type=float,
                       help="least IoU of a track's predicted box and a box to continue it "
                            "(0.3); implies --track")
    video.add_argument("--track-max-missed", type=int,
                       help="labeled frames a track may miss before it ends (3); implies --track")
    video.add_argument("--track-across-labels", action="store_true", default=None,
                       help="link boxes whatever their label (an object called car, then "
                            "truck); implies --track")
    video.add_argument("--clip-seconds", type=float, help="clip length for video-caption/-ask")
    video.add_argument("--clip-fps", type=float, help="frames per second inside a clip (1)")
    pseudo = p.add_argument_group("pseudo-label (OWL-ST)")
    pseudo.add_argument("--box-threshold", type=float,
                        help="keep boxes scoring above this (0.1)")
    pseudo.add_argument("--image-threshold", type=float,
                        help="keep an image when its best box reaches this (0.3)")
    pseudo.add_argument("--caption-column", help="input column of captions (caption)")
    pseudo.add_argument("--vocabulary", help="file of curated class names, one per line")
    p.add_argument("--ray-address", help="join this Ray cluster ('auto' inside one)")
    p.add_argument("--overwrite", action="store_true", default=None,
                   help="replace earlier results in the output folder")
    p.add_argument("--retry-errors", action="store_true", default=None,
                   help="rerun: label again the inputs whose rows are errors")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--dry-run", action="store_true",
                   help="check the spec, inputs and output and print what would be labeled; "
                        "start nothing, write nothing")


def _spec_from_args(args: argparse.Namespace):
    overrides = {flag: getattr(args, flag) for flag in (*TASK_FLAGS, *JOB_FLAGS, "track")}
    return load_job_spec(args.spec, **overrides)


def cmd_run(args: argparse.Namespace) -> int:
    from labeler.jobs.runner import run_job

    spec = _spec_from_args(args)  # SpecError before any Ray work
    try:
        summary = run_job(spec, progress=not args.no_progress,  # images or videos: input.media
                          dry_run=args.dry_run)
    except KeyboardInterrupt:
        # Committed shards are whole files (written under a dot-name, then renamed), so a
        # rerun of the same command resumes after them.
        again = ("run it again without --overwrite (output.overwrite), which would start "
                 "afresh," if spec.output.overwrite else "run the same command again")
        print(f"\ninterrupted: the shards already committed to {spec.output.path} are kept; "
              f"{again} to label the rest", file=sys.stderr)
        return 130
    print("\n".join(summary.lines()))
    return 0


def cmd_tiny_models(args: argparse.Namespace) -> int:
    from labeler.testing import FAMILIES, build_tiny_model

    families = _names(args.families) if args.families is not None else list(FAMILIES)
    unknown = [family for family in families if family not in FAMILIES]
    if unknown or not families:  # before any checkpoint is built
        raise SpecError(f"--families {args.families!r}: "
                        + (f"not a family: {', '.join(unknown)}; " if unknown else "")
                        + f"give some of {', '.join(FAMILIES)}, comma-separated")
    for family in families:
        options = {"image_size": args.owlv2_image_size} if family == "owlv2" else {}
        path = build_tiny_model(family, Path(args.dir) / family, **options)
        print(f"{family}: {path}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Everything on embedded defaults: tiny OWLv2, generated images, local Ray."""
    from labeler.jobs.images import run_image_job
    from labeler.testing import build_tiny_model
    from labeler.testing.samples import make_sample_images

    work = Path(args.workdir)
    model_dir = work / "models" / "owlv2"
    if not (model_dir / "config.json").exists():
        print(f"building tiny OWLv2 checkpoint in {model_dir}")
        build_tiny_model("owlv2", model_dir)
    images = work / "images"
    if not images.exists():
        make_sample_images(images, count=args.count)
        print(f"wrote sample images to {images}")
    spec = load_job_spec(None, input=str(images), output=args.output, task="detect",
                         family="owlv2", model=str(model_dir),
                         labels=["a photo of a cat", "a photo of a dog", "a car"],
                         threshold=0.3, overwrite=True)
    summary = run_image_job(spec, progress=not args.no_progress)
    print("\n".join(summary.lines()))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """The online API on Ray Serve: a config file for several models, or flags for one."""
    from labeler.serve.config import load_serve_spec
    from labeler.serve.server import serve_forever

    spec = load_serve_spec(args.config, **serve_overrides(args))  # SpecError before Ray work
    return serve_forever(spec)


def serve_overrides(args: argparse.Namespace) -> dict:
    """`labeler serve`'s flags, as load_serve_spec's overrides (None: not given)."""
    return {k: getattr(args, k) for k in (
        "host", "port", "task", "family", "model", "revision", "labels", "threshold", "prompt",
        "query_image", "query_box", "queries", "label_thresholds", "templates", "nms",
        "nms_threshold", "max_detections", "tiles", "tile_overlap", "preprocess", "num_gpus",
        "max_batch_size", "batch_wait_timeout_s", "num_replicas", "sample_fps",
        "every_n_frames", "min_change", "clip_seconds", "clip_fps", "track_iou",
        "track_max_missed", "track_across_labels")}


def cmd_export(args: argparse.Namespace) -> int:
    """A task of a job's output -> COCO, YOLO, Label Studio or MOT (docs/export.md)."""
    from labeler.export import ExportOptions, run_export

    summary = run_export(ExportOptions(
        job=args.job, format=args.format, out=args.out, task=args.task, min_score=args.min_score,
        include_not_kept=args.include_not_kept, copy_images=args.copy_images,
        overwrite=args.overwrite, val_fraction=args.val_fraction,
        image_url_prefix=args.image_url_prefix, slice_size=args.slice_size,
        slice_overlap=args.slice_overlap, slice_min_visible=args.slice_min_visible,
        skip_empty_slices=args.skip_empty_slices, interpolate=args.interpolate,
        ids_file=args.ids_file))
    print("\n".join(summary.lines()))
    return 0


def cmd_select(args: argparse.Namespace) -> int:
    """The rows of a job most worth a human's review, best first (docs/select.md)."""
    from labeler.selection import SelectOptions, run_select

    given = {name: getattr(args, name) for name in (
        "task", "limit", "iou", "ids_file", "json")
        if getattr(args, name) is not None}
    by = args.by or ("disagreement" if args.tasks or len(args.outputs) > 1 else "uncertainty")
    summary = run_select(SelectOptions(outputs=tuple(args.outputs), by=by,
                                       tasks=tuple(args.tasks or ()), **given))
    print("\n".join(summary.lines()))
    return 0


def cmd_preview(args: argparse.Namespace) -> int:
    """A sample of a task of a job's output, drawn, on a static page (docs/preview.md)."""
    from labeler.preview import PreviewOptions, run_preview

    summary = run_preview(PreviewOptions(
        output=args.output, out=args.out, task=args.task, limit=args.limit,
        min_score=args.min_score, seed=args.seed, errors=args.errors, ids_file=args.ids_file))
    print("\n".join(summary.lines()))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """A task's boxes against COCO or YOLO ground truth: AP per category, best-F1 thresholds;
    or a tracked video task's tracks against MOT ground truth (docs/eval.md)."""
    from labeler.evaluate import DEFAULT_WORST, EvalError, EvalOptions, run_eval

    if args.mot is not None:
        from labeler.evaluate.tracks import TrackEvalOptions, run_track_eval

        given = [flag for flag, value in (("--worst", args.worst),
                                          ("--worst-ids", args.worst_ids),
                                          ("--include-not-kept", args.include_not_kept))
                 if value is not None and value is not False]
        if given:
            raise EvalError(f"{given[0]} applies to --coco and --yolo, not to --mot")
        summary = run_track_eval(TrackEvalOptions(output=args.output, mot=args.mot,
                                                  task=args.task, iou=args.iou,
                                                  match=args.match or {}, json=args.json))
        print("\n".join(summary.lines()))
        return 0
    summary = run_eval(EvalOptions(output=args.output, coco=args.coco, yolo=args.yolo,
                                   task=args.task,
                                   iou=args.iou, match=args.match or {},
                                   include_not_kept=args.include_not_kept,
                                   worst=DEFAULT_WORST if args.worst is None else args.worst,
                                   worst_ids=args.worst_ids, json=args.json))
    print("\n".join(summary.lines()))
    return 0


def _scores(text: str) -> tuple[float, ...]:
    """'0.1,0.5' -> (0.1, 0.5) (the range is checked with the other stats options)."""
    try:
        scores = tuple(float(s) for s in text.split(",") if s.strip())
    except ValueError:
        scores = ()
    if not scores:
        raise argparse.ArgumentTypeError(f"{text!r}: comma-separated box scores, e.g. "
                                         f"0.1,0.3,0.5,0.7")
    return scores


def cmd_track(args: argparse.Namespace) -> int:
    """A video job's boxes linked into tracks again, with other settings (docs/tasks.md)."""
    from labeler.tracking.retrack import TrackOptions, run_track

    settings = {name: getattr(args, name) for name in (
        "iou", "buffer", "max_missed", "new_track_score", "min_length", "across_labels")
        if getattr(args, name) is not None}
    summary = run_track(TrackOptions(output=args.job, out=args.out, task=args.task,
                                     settings=settings, overwrite=args.overwrite))
    print("\n".join(summary.lines()))
    return 0


def cmd_fuse(args: argparse.Namespace) -> int:
    """Several box tasks of a job fused into one, image by image (docs/fuse.md)."""
    from labeler.fusion import FuseOptions, run_fuse

    settings = {name: getattr(args, name) for name in (
        "tasks", "weights", "iou", "min_score", "conf_type", "min_models", "name")
        if getattr(args, name) is not None}
    if args.rename:
        settings["rename"] = dict(args.rename)
    track = {name: getattr(args, f"track_{name}") for name in ("iou", "max_missed")
             if getattr(args, f"track_{name}") is not None}
    if args.track or track:
        settings["track"] = track
    summary = run_fuse(FuseOptions(outputs=tuple(args.jobs), out=args.out, settings=settings,
                                   overwrite=args.overwrite, workers=args.workers))
    print("\n".join(summary.lines()))
    return 0


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _numbers(text: str) -> list[float]:
    try:
        return [float(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: comma-separated numbers, e.g. 2,1") from None


def _positive_int(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: a whole number, at least 1")
    return int(text)


def _renaming(text: str) -> tuple[str, str]:
    old, sep, new = text.partition("=")
    if not sep or not old.strip() or not new.strip():
        raise argparse.ArgumentTypeError(f"{text!r}: a task's label, '=', the label to fuse it "
                                         f"as, e.g. 'a person=person'")
    return old.strip(), new.strip()


def cmd_stats(args: argparse.Namespace) -> int:
    """The figures of a job's output per task: rows, errors, boxes per label (docs/stats.md)."""
    from labeler.stats import StatsOptions, run_stats

    summary = run_stats(StatsOptions(output=args.output, task=args.task, scores=args.scores,
                                     top=args.top, json=args.json))
    print("\n".join(summary.lines()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="labeler", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a labeling job (spec file and/or flags)")
    _add_run_flags(run)
    run.set_defaults(func=cmd_run)

    tiny = sub.add_parser("tiny-models", help="build tiny offline checkpoints of every family")
    tiny.add_argument("dir")
    tiny.add_argument("--families", help="comma-separated subset")
    tiny.add_argument("--owlv2-image-size", type=int, default=96,
                      help="OWLv2 input size; 960 matches the real base model's cost")
    tiny.set_defaults(func=cmd_tiny_models)

    demo = sub.add_parser("demo", help="label generated images with a tiny OWLv2, offline")
    demo.add_argument("--output", default="demo-output")
    demo.add_argument("--workdir", default=".cache/demo")
    demo.add_argument("--count", type=int, default=48, help="good sample images")
    demo.add_argument("--no-progress", action="store_true")
    demo.set_defaults(func=cmd_demo)

    srv = sub.add_parser("serve", help="serve models over HTTP (Ray Serve); config and/or flags")
    srv.add_argument("config", nargs="?", help="serve config YAML; flags override its fields")
    srv.add_argument("--host", help="address to listen on (127.0.0.1 when no API token is set)")
    srv.add_argument("--port", type=int, help="port (default 8000)")
    for flag in ("--task", "--family", "--model", "--revision", "--prompt"):
        srv.add_argument(flag, help=f"as for `labeler run` ({flag[2:]} of every served model)")
    srv.add_argument("--labels", type=_labels, help='comma-separated class names: "cat,dog"')
    srv.add_argument("--threshold", type=float, help="default minimum box score")
    srv.add_argument("--query-image", help="detect-by-example: the example image; without it, "
                                           "requests bring boxes drawn in the image (examples)")
    srv.add_argument("--query-box", type=_box, metavar="X0,Y0,X1,Y1",
                     help="as for `labeler run`")
    _add_box_flags(srv)
    srv.add_argument("--preprocess", choices=["processor", "fast"])
    srv.add_argument("--num-gpus", type=float, help="GPUs per replica; fractions share a GPU")
    srv.add_argument("--max-batch-size", type=int, help="requests per forward pass")
    srv.add_argument("--batch-wait-timeout-s", type=float, help="wait this long for a batch to fill")
    srv.add_argument("--num-replicas", type=int, help="replicas per model")
    video = srv.add_argument_group("video requests (/v1/video, Label Studio video tasks)")
    video.add_argument("--sample-fps", type=float, help="frames labeled a second (default 1)")
    video.add_argument("--every-n-frames", type=int, help="every n-th frame")
    video.add_argument("--min-change", type=float,
                       help="skip sampled frames that changed less than this (0..1)")
    video.add_argument("--clip-seconds", type=float, help="clip length for video-caption/-ask")
    video.add_argument("--clip-fps", type=float, help="frames per second inside a clip (1)")
    # Boxes of detect, ground and detect-by-example are linked by default; these tune it.
    video.add_argument("--track-iou", type=float, help="as for `labeler run`")
    video.add_argument("--track-max-missed", type=int, help="as for `labeler run`")
    video.add_argument("--track-across-labels", action="store_true", default=None,
                       help="as for `labeler run`")
    srv.set_defaults(func=cmd_serve)

    exp = sub.add_parser("export", help="a job's boxes as COCO, YOLO, Label Studio tasks or "
                                        "MOT tracks")
    exp.add_argument("job", help="the job's output folder or s3:// prefix")
    exp.add_argument("--format", required=True, choices=["coco", "yolo", "label-studio", "mot"],
                     help="coco: annotations.json; yolo: images/, labels/, data.yaml; "
                          "label-studio: tasks.json with predictions, label_config.xml; "
                          "mot: a tracked video job's tracks, a MOTChallenge folder per video")
    exp.add_argument("--out", required=True, help="output folder or s3:// prefix (empty)")
    exp.add_argument("--task", help="the task folder to export (default: the only one with boxes)")
    exp.add_argument("--min-score", type=float, help="drop boxes scoring under this")
    exp.add_argument("--include-not-kept", action="store_true",
                     help="pseudo-label: export images under the image threshold too")
    exp.add_argument("--copy-images", action="store_true",
                     help="coco: copy the images to <out>/images (yolo always copies)")
    exp.add_argument("--overwrite", action="store_true", help="replace what --out holds")
    exp.add_argument("--interpolate", action="store_true",
                     help="mot: a box on every frame between two boxes of a track, moved "
                          "linearly (dense ground truth from sampled frames)")
    exp.add_argument("--ids-file", help="export only the rows of these ids (a text file, one "
                                        "a line: what `labeler select` writes)")
    exp.add_argument("--val-fraction", type=float, default=0.0,
                     help="hold out this share of the images as a validation split, chosen "
                          "by id (the same on every export); default 0: one set")
    exp.add_argument("--image-url-prefix",
                     help="label-studio: image (or video) URL = this prefix + the row id "
                          "(default: the row's uri), e.g. /data/local-files/?d=photos/")
    sliced = exp.add_argument_group("slices (coco, yolo): train at a model's input size on "
                                    "large images")
    sliced.add_argument("--slice", type=int, metavar="SIZE", dest="slice_size",
                        help="write each image as SIZE x SIZE overlapping slices with their "
                             "boxes (as SAHI's slice_coco), e.g. 640")
    sliced.add_argument("--slice-overlap", type=float,
                        help="share of SIZE neighbouring slices have in common (0.2)")
    sliced.add_argument("--slice-min-visible", type=float,
                        help="keep a box in a slice when this share of it shows there (0.1)")
    sliced.add_argument("--skip-empty-slices", action="store_true",
                        help="leave out slices without a box (default: kept, as backgrounds)")
    exp.set_defaults(func=cmd_export)

    trk = sub.add_parser("track", help="link a video job's boxes into tracks again, with "
                                       "other settings, without labeling again")
    trk.add_argument("job", help="the job's output folder or s3:// prefix")
    trk.add_argument("--out", required=True,
                     help="where the tracked copy of the output goes (empty); `labeler run` "
                          "with the same settings resumes it")
    trk.add_argument("--task", help="the task folder (default: the only one with boxes)")
    trk.add_argument("--overwrite", action="store_true", help="replace what --out holds")
    trk.add_argument("--iou", type=float, help="least IoU to continue a track")
    trk.add_argument("--buffer", type=float, help="buffered round's growth (C-BIoU)")
    trk.add_argument("--max-missed", type=int, help="labeled frames a track may miss")
    trk.add_argument("--new-track-score", type=float, help="least score to start a track")
    trk.add_argument("--min-length", type=int, help="fewest boxes of a kept track")
    trk.add_argument("--across-labels", action="store_true", default=None,
                     help="link boxes whatever their label")
    trk.add_argument("--per-label", dest="across_labels", action="store_false",
                     help="link boxes of one label only (the default)")
    trk.set_defaults(func=cmd_track)

    fuse = sub.add_parser("fuse", help="fuse the boxes of several tasks of a job into one "
                                       "(weighted boxes fusion), without labeling again")
    fuse.add_argument("jobs", nargs="+", metavar="job",
                      help="the job's output folder or s3:// prefix; or several, one per task, "
                           "of separate jobs over the same input")
    fuse.add_argument("--tasks", type=_names,
                      help="the task folders to fuse, comma-separated: --tasks owlv2,florence2; "
                           "with several outputs one per output (default: each one's only task "
                           "with boxes)")
    fuse.add_argument("--out", required=True,
                      help="where the fused task goes (empty): <out>/<name>/part-NNNNN.parquet")
    fuse.add_argument("--name", help="the fused task's folder and task_name (fused)")
    fuse.add_argument("--weights", type=_numbers,
                      help="a weight per task, comma-separated, in the order of --tasks (1 each)")
    fuse.add_argument("--iou", type=float,
                      help="a box joins a cluster whose fused box it overlaps by more (0.55)")
    fuse.add_argument("--min-score", type=float,
                      help="a task's boxes under this score are dropped before fusing (0)")
    fuse.add_argument("--conf-type", choices=["avg", "max"],
                      help="a fused box's score: its boxes' mean weighted score, scaled by the "
                           "share of tasks that found it (avg, the default), or their best")
    fuse.add_argument("--min-models", type=int,
                      help="keep a fused box only when this many tasks found it (1)")
    fuse.add_argument("--rename", type=_renaming, action="append", metavar="LABEL=AS",
                      help="fuse a task's label as another (repeatable): "
                           "--rename 'a person=person'")
    fuse.add_argument("--track", action="store_true",
                      help="video frames: link each video's fused boxes into tracks")
    fuse.add_argument("--track-iou", type=float, help="as for `labeler run`; implies --track")
    fuse.add_argument("--track-max-missed", type=int,
                      help="as for `labeler run`; implies --track")
    fuse.add_argument("--workers", type=_positive_int,
                      help="processes fusing part files at once (default: one per CPU)")
    fuse.add_argument("--overwrite", action="store_true", help="replace what --out holds")
    fuse.set_defaults(func=cmd_fuse)

    sel = sub.add_parser("select", help="the rows most worth a human's review: where a task "
                                        "is least sure, or where tasks disagree")
    sel.add_argument("outputs", nargs="+", metavar="output",
                     help="the job's output folder or s3:// prefix; by disagreement, several "
                          "(one task each), as labeler fuse takes them")
    sel.add_argument("--by", choices=["uncertainty", "disagreement"],
                     help="uncertainty: one task's low box scores (the default); "
                          "disagreement: the share of objects some tasks found and others "
                          "missed (the default with --tasks or several outputs)")
    sel.add_argument("--task", help="by uncertainty: the task (default: the only one with boxes)")
    sel.add_argument("--tasks", type=_names,
                     help="by disagreement: the tasks compared, comma-separated")
    sel.add_argument("--limit", type=int, help="rows selected (100)")
    sel.add_argument("--iou", type=float,
                     help="by disagreement: boxes of one object overlap by more (0.55)")
    sel.add_argument("--ids-file", help="write the selected ids here, best first, one a line: "
                                        "for labeler preview and export --ids-file")
    sel.add_argument("--json", help="also write the selection with scores and reasons here")
    sel.set_defaults(func=cmd_select)

    pre = sub.add_parser("preview", help="draw a sample of a job's output on a static HTML page")
    pre.add_argument("output", help="the job's output folder or s3:// prefix")
    pre.add_argument("--out", required=True,
                     help="local folder for index.html and images/ (replaces an earlier preview)")
    pre.add_argument("--task", help="the task folder to show (default: the only one)")
    pre.add_argument("--limit", type=int, default=48, help="rows to show (default 48)")
    pre.add_argument("--min-score", type=float, help="hide boxes scoring under this")
    pre.add_argument("--seed", type=int, default=0,
                     help="picks the sample: rows are ranked by a hash of their id and the "
                          "seed, the same on every run (default 0)")
    pre.add_argument("--errors", action="store_true",
                     help="show error rows (and the reasons) instead of the others")
    pre.add_argument("--ids-file", help="show the rows of these ids (a text file, one a line; "
                     "`labeler eval --worst-ids` writes one), in its order, not a sample")
    pre.set_defaults(func=cmd_preview)

    st = sub.add_parser("stats", help="a job's rows, errors and boxes per label and score")
    st.add_argument("output", help="the job's output folder or s3:// prefix")
    st.add_argument("--task", help="one task folder (default: every task)")
    st.add_argument("--scores", type=_scores, default=(0.1, 0.3, 0.5, 0.7),
                    help="count the boxes scoring at least each of these (0.1,0.3,0.5,0.7)")
    st.add_argument("--top", type=int, default=30, help="labels shown per task (default 30)")
    st.add_argument("--json", help="also write the figures to this local JSON file")
    st.set_defaults(func=cmd_stats)

    ev = sub.add_parser("eval", help="a task's boxes against COCO or YOLO ground truth: AP "
                                     "per category, best-F1 score thresholds; tracks against "
                                     "MOT ground truth: MOTA, IDF1")
    ev.add_argument("output", help="the job's output folder or s3:// prefix")
    truth = ev.add_mutually_exclusive_group(required=True)
    truth.add_argument("--coco", help="ground truth: a COCO detection JSON file (local or s3://)")
    truth.add_argument("--yolo", help="ground truth: a YOLO dataset folder, data.yaml and "
                       "labels/ or <split>/labels/ (local or s3://)")
    truth.add_argument("--mot", help="ground truth of a tracked video task: a folder of "
                       "MOTChallenge sequences, <video id>/gt/gt.txt (local or s3://): MOTA, "
                       "IDF1 per video")
    ev.add_argument("--task", help="the task folder (default: the only one with boxes)")
    ev.add_argument("--iou", type=float, default=0.5,
                    help="IoU at which the best-F1 thresholds are found: 0.5 (default), "
                         "0.55, ..., 0.95")
    ev.add_argument("--match", type=_label_and_text, action=_ByLabel, metavar="LABEL=CATEGORY",
                    help="pair a label with a category of another name (repeat it)")
    ev.add_argument("--include-not-kept", action="store_true",
                    help="pseudo-label: evaluate images under the image threshold too")
    ev.add_argument("--worst", type=int,
                    help="list this many images with the most false and missed boxes at the "
                         "best-F1 thresholds (default 10)")
    ev.add_argument("--worst-ids", help="also write the row ids of those images to this "
                    "local text file, one a line: `labeler preview --ids-file` shows them")
    ev.add_argument("--json", help="also write the figures to this local JSON file")
    ev.set_defaults(func=cmd_eval)
    return parser


def _refuse_unknown(parser: argparse.ArgumentParser, command: str, unknown: list[str]) -> None:
    """Exit 2 with the subcommand's usage, naming each unknown argument and the flag of
    that subcommand most like it (--lables: --labels), as argparse does not."""
    sub = next(a for a in parser._actions
               if isinstance(a, argparse._SubParsersAction)).choices[command]
    known = [flag for action in sub._actions for flag in action.option_strings
             if flag.startswith("--")]
    named = []
    for arg in unknown:
        close = difflib.get_close_matches(arg.split("=", 1)[0], known, n=1, cutoff=0.6) \
            if arg.startswith("--") else []
        named.append(f"{arg} (did you mean {close[0]}?)" if close else arg)
    sub.error(f"unrecognized arguments: {' '.join(named)}")


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        _refuse_unknown(parser, args.command, unknown)
    try:
        code = args.func(args)
        sys.stdout.flush()  # into a pipe: what is left is written here, not at exit
        return code
    except SpecError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: no traceback, the shell's code for it
        print("\ninterrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader stopped reading (labeler stats ... | head): quietly, as CLI tools do.
        # What Python would flush at exit goes nowhere, or it would fail again there.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
