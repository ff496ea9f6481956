"""OWLv2 detection figures on this machine (issue: first end-to-end job).

Prints, with the command that made them:
  naive       the documentation's loop: one image per processor call and forward
  e2e         steady-state images/s of the labeling job (Ray start and model load apart),
              for each preprocessing mode
  model-only  predict + postprocess over already preprocessed batches, same batch size and
              threads as the job's actor; pipeline efficiency = e2e / model-only
  decode      CPU ms per JPEG of the decode stage (720p and 4000x3000), with and without
              reduce-on-load, and its effect on the model input
  memory      peak RSS of the driver for two input counts (--memory N1 N2)

The model is a tiny OWLv2 built at the real input resolution (960x960, patch 16, one layer,
one attention head): the preprocessing costs what it costs for the real model, the network
is tiny. Random weights saturate its class scores (hundreds of patches score 1.0), so its
class head is made to give spread scores (`spread_class_scores`) and the threshold is the
score that keeps KEPT_FRACTION of the boxes, ~36 per image, what a real model gives at
its usual thresholds; both are printed. Every box kept costs a record field, Arrow
conversion and Parquet bytes, so the box count is part of the workload.

    .venv/bin/python benchmarks/owlv2_cpu.py --images 500
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from labeler.config import load_job_spec  # noqa: E402
from labeler.media.image import decode_image  # noqa: E402
from labeler.testing import build_tiny_model  # noqa: E402
from labeler.testing.samples import jpeg_bytes, synthetic_image  # noqa: E402

LABELS = ["a photo of a cat", "a photo of a dog", "a car"]
# Share of the 3,600 boxes per image scoring above the threshold: ~36 kept per image.
KEPT_FRACTION = 0.01
# The class head's logit scale once spread: cosine similarities (about N(0, 0.18) at width
# 32) times 10 give logits of about N(0, 1.8), so the top 1% of scores are not all 1.0.
SPREAD_LOGIT_SCALE = 10.0


def make_jpegs(folder: Path, count: int, size=(1280, 720)) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"img_{i:05d}.jpg"
        if not path.exists():
            # Noise on top of the synthetic scene so JPEGs cost what photos cost to decode.
            img = np.asarray(synthetic_image(*size, seed=i)).astype(np.int16)
            noise = np.random.default_rng(i).integers(-20, 20, img.shape)
            from PIL import Image
            path.write_bytes(jpeg_bytes(Image.fromarray(np.clip(img + noise, 0, 255).astype(np.uint8))))
        paths.append(path)
    return paths


def naive_loop(model_dir: str, paths: list[Path], threshold: float) -> float:
    """images/s of the transformers documentation's usage, one image at a time."""
    from PIL import Image
    from transformers import Owlv2ForObjectDetection, Owlv2Processor

    processor = Owlv2Processor.from_pretrained(model_dir)
    model = Owlv2ForObjectDetection.from_pretrained(model_dir).eval()
    start = time.perf_counter()
    for path in paths:
        image = Image.open(path).convert("RGB")
        inputs = processor(text=[LABELS], images=image, return_tensors="pt")
        with torch.inference_mode():
            outputs = model(**inputs)
        side = max(image.size)
        processor.post_process_grounded_object_detection(
            outputs, threshold=threshold, target_sizes=[(side, side)], text_labels=[LABELS])
    return len(paths) / (time.perf_counter() - start)


def spread_class_scores(model_dir: str) -> None:
    """Rewrite the tiny checkpoint's class head so its logits are cosine similarity x
    SPREAD_LOGIT_SCALE (no per-patch shift or scale), instead of saturated random ones."""
    from transformers import Owlv2ForObjectDetection

    model = Owlv2ForObjectDetection.from_pretrained(model_dir)
    head = model.class_head
    with torch.no_grad():
        head.logit_shift.weight.zero_()
        head.logit_shift.bias.zero_()
        head.logit_scale.weight.zero_()
        head.logit_scale.bias.fill_(SPREAD_LOGIT_SCALE - 1.0)  # elu(x) + 1 == x + 1 for x > 0
    model.save_pretrained(model_dir)


def threshold_keeping(model_dir: str, paths: list[Path], fraction: float) -> float:
    """The score above which `fraction` of the boxes of these images fall (best label per
    box, as the detector scores them)."""
    from labeler.config import TaskSpec
    from labeler.models.base import ImageInput
    from labeler.models.owlv2 import Owlv2Detector

    adapter = Owlv2Detector(TaskSpec(task="detect", model={"family": "owlv2", "source": model_dir},
                                     labels=LABELS, preprocess="fast"))
    adapter.setup(torch.device("cpu"))
    scores = []
    for i in range(0, len(paths), 8):
        images = [decode_image(p.read_bytes(), 10**9, None) for p in paths[i:i + 8]]
        inputs = [ImageInput(d.pixels, d.width, d.height) for d in images]
        with torch.inference_mode():
            logits = adapter.predict(adapter.model_inputs(inputs))["logits"]
        scores.append(torch.sigmoid(logits.max(dim=-1).values).flatten())
    return float(torch.quantile(torch.cat(scores), 1.0 - fraction))


def e2e(model_dir: str, folder: Path, out: Path, preprocess: str, batch_size: int,
        threshold: float, concurrency: int = 1, actor_cpus: float = 1.0,
        torch_threads: int | None = None):
    from labeler.jobs.images import run_image_job

    spec = load_job_spec(None, input=str(folder), output=str(out), task="detect",
                         family="owlv2", model=model_dir, labels=LABELS, threshold=threshold,
                         preprocess=preprocess, batch_size=batch_size, concurrency=concurrency,
                         actor_cpus=actor_cpus, torch_threads=torch_threads, overwrite=True)
    return run_image_job(spec, progress=False)


def model_only(model_dir: str, paths: list[Path], preprocess: str, batch_size: int,
               threshold: float, threads: int = 1) -> float:
    """images/s of predict + postprocess on preprocessed batches (fast mode: predict
    normalises the uint8 canvas), one actor's model work with its threads: the ceiling the
    job's pipeline is compared with."""
    from labeler.config import TaskSpec
    from labeler.models.base import ImageInput
    from labeler.models.owlv2 import Owlv2Detector

    torch.set_num_threads(threads)
    adapter = Owlv2Detector(TaskSpec(task="detect", model={"family": "owlv2", "source": model_dir},
                                     labels=LABELS, threshold=threshold, preprocess=preprocess))
    adapter.setup(torch.device("cpu"))
    batches = []
    for i in range(0, len(paths), batch_size):
        images = [decode_image(p.read_bytes(), 10**9, 1008) for p in paths[i:i + batch_size]]
        inputs = [ImageInput(d.pixels, d.width, d.height) for d in images]
        batches.append((adapter.model_inputs(inputs), inputs))
    boxes = 0
    start = time.perf_counter()
    with torch.inference_mode():
        for pixels, inputs in batches:
            boxes += sum(len(r["detections"]) for r in adapter.postprocess(adapter.predict(pixels), inputs))
    return len(paths) / (time.perf_counter() - start), boxes / len(paths)


def decode_costs(model_dir: str, tmp: Path) -> list[str]:
    from transformers import Owlv2ImageProcessor

    processor = Owlv2ImageProcessor.from_pretrained(model_dir)
    lines = []
    for size in [(1280, 720), (4000, 3000)]:
        path = make_jpegs(tmp / f"decode_{size[0]}", 1, size)[0]
        data = path.read_bytes()
        pixel_values = {}
        for min_side in (None, 1008, 960):
            decode_image(data, 10**9, min_side)  # warm
            reps = 20 if size[0] < 2000 else 8
            start = time.perf_counter()
            for _ in range(reps):
                decoded = decode_image(data, 10**9, min_side)
            ms = (time.perf_counter() - start) / reps * 1000
            chw = torch.from_numpy(decoded.pixels.copy()).permute(2, 0, 1)
            pixel_values[min_side] = processor(images=[chw], return_tensors="pt")["pixel_values"]
            diff = (pixel_values[min_side] - pixel_values[None]).abs()
            lines.append(f"decode {size[0]}x{size[1]} JPEG, decode_min_side={min_side}: "
                         f"{ms:.1f} ms/image (1 core), decoded {decoded.pixels.shape[1]}x"
                         f"{decoded.pixels.shape[0]}; model input vs full decode: mean |d| "
                         f"{diff.mean():.4f}, max |d| {diff.max():.3f} (normalised units)")
    return lines


def peak_driver_rss_mb(model_dir: str, count: int, tmp: Path, threshold: float) -> float:
    """Run the job in a fresh process over `count` images; its peak RSS in MB."""
    folder = tmp / f"mem_{count}"
    make_jpegs(folder, count, size=(640, 360))
    code = ("from labeler.cli import main; "
            f"main(['run', '--input', {str(folder)!r}, '--output', {str(tmp / f'mem_out_{count}')!r}, "
            f"'--task', 'detect', '--family', 'owlv2', '--model', {model_dir!r}, "
            f"'--labels', 'cat,dog', '--threshold', '{threshold}', '--preprocess', 'fast', "
            "'--overwrite', '--no-progress']); "
            # VmHWM: this process's own peak; ru_maxrss would carry the parent's across exec.
            "print('PEAK', next(line.split()[1] for line in open('/proc/self/status') "
            "if line.startswith('VmHWM:')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    peak_kb = [line for line in out.stdout.splitlines() if line.startswith("PEAK")][0].split()[1]
    return int(peak_kb) / 1024


def throughput_figures(args, model_dir: str, tmp: Path, threshold: float) -> None:
    paths = make_jpegs(tmp / "jpeg720", args.images)
    naive = naive_loop(model_dir, paths[: args.naive_images], threshold)
    print(f"naive: {naive:.2f} images/s (documentation loop, {args.naive_images} images)")
    for mode in args.modes.split(","):
        summary = e2e(model_dir, tmp / "jpeg720", tmp / f"out_{mode}", mode, args.batch_size,
                      threshold, args.concurrency, args.actor_cpus, args.torch_threads)
        threads = args.torch_threads or max(1, int(args.actor_cpus))
        only, boxes = model_only(model_dir, paths[: min(len(paths), 96)], mode, args.batch_size,
                                 threshold, threads)
        print(f"e2e preprocess={mode} actors={args.concurrency}x{args.actor_cpus:g} CPU "
              f"({threads} torch threads): "
              f"{summary.steady_images_per_s:.2f} images/s steady over "
              f"{summary.rows} images = {summary.steady_images_per_s / naive:.1f}x naive "
              f"(ray start {summary.ray_start_s:.1f}s, load + first batch "
              f"{summary.first_result_s:.1f}s, wall {summary.wall_s:.1f}s)")
        print(f"model-only preprocess={mode}: {only:.2f} images/s; pipeline efficiency "
              f"{summary.steady_images_per_s / only:.2f} ({boxes:.0f} boxes per image)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--naive-images", type=int, default=50, help="the naive loop is slow")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=1, help="model actors")
    parser.add_argument("--actor-cpus", type=float, default=1.0,
                        help="CPUs each actor reserves (0.5: two actors share a core)")
    parser.add_argument("--torch-threads", type=int,
                        help="each actor's torch threads (default: its CPUs, at least 1)")
    parser.add_argument("--vision-width", type=int, default=32,
                        help="the tiny network's vision width (its attention cost)")
    parser.add_argument("--modes", default="fast,processor")
    parser.add_argument("--memory", type=int, nargs=2, metavar=("N1", "N2"))
    parser.add_argument("--memory-only", action="store_true", help="skip the throughput figures")
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "labeler-bench"))
    args = parser.parse_args()
    print("command:", shlex.join([Path(sys.executable).name, *sys.argv]))

    tmp = Path(args.workdir)
    model_dir = str(tmp / f"owlv2-960-w{args.vision_width}-spread")
    if not Path(model_dir, "config.json").exists():
        build_tiny_model("owlv2", model_dir, image_size=960, vision_heads=1,
                         vision_width=args.vision_width)
        spread_class_scores(model_dir)
    threshold = threshold_keeping(model_dir, make_jpegs(tmp / "jpeg720", 48), KEPT_FRACTION)
    print(f"threshold: {threshold:.4f} (keeps {KEPT_FRACTION:.0%} of the boxes of 48 images)")
    if not args.memory_only:
        throughput_figures(args, model_dir, tmp, threshold)
        for line in decode_costs(model_dir, tmp):
            print(line)
    if args.memory:
        import ray
        ray.shutdown()
        for n in args.memory:
            print(f"memory: driver peak RSS {peak_driver_rss_mb(model_dir, n, tmp, threshold):.0f} MB "
                  f"for {n} images")
    print(json.dumps({"cpu_count": os.cpu_count(), "torch": torch.__version__}))


if __name__ == "__main__":
    main()
