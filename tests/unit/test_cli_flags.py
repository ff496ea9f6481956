"""CLI flags that build mappings and lists of the spec (queries, label_thresholds, templates)
and the box options, for `labeler run` and `labeler serve`: parsed into the validated spec,
bad ones refused by argparse (exit 2) naming the flag, before any Ray work."""

import pytest

from labeler.cli import _spec_from_args, build_parser, main, serve_overrides
from labeler.config import ClipSpec, SpecError, TrackingSpec
from labeler.media.video import Sampling
from labeler.serve.config import load_serve_spec

ONTOLOGY = ["--labels", "car,cyclist", "--query", "car=automobile", "--query", " car = auto ",
            "--query", "cyclist=a person riding a bicycle", "--label-threshold", "cyclist=0.25",
            "--template", "a photo of a {}", "--template", "{}",
            "--nms", "per-label", "--nms-threshold", "0.5", "--max-detections", "20",
            "--tiles", "3x2", "--tile-overlap", "0.3"]


def _run_spec(tmp_path, *flags, spec_file=None):
    (tmp_path / "a.jpg").write_bytes(b"listed, not decoded")
    args = build_parser().parse_args(
        ["run", *([str(spec_file)] if spec_file else []), "--input", str(tmp_path),
         "--output", str(tmp_path / "out"), "--task", "detect", "--family", "owlv2",
         "--model", "m", *flags])
    return _spec_from_args(args)


def test_run_flags_build_the_ontology_and_box_options(tmp_path):
    (task,) = _run_spec(tmp_path, *ONTOLOGY).tasks
    assert task.queries == {"car": ["automobile", "auto"],
                            "cyclist": ["a person riding a bicycle"]}
    assert task.label_thresholds == {"cyclist": 0.25}
    assert task.label_queries() == [["automobile", "auto"], ["a person riding a bicycle"]]
    assert (task.threshold_for("cyclist"), task.threshold_for("car")) == (0.25, 0.1)
    assert task.templates == ["a photo of a {}", "{}"]
    assert (task.nms, task.nms_threshold, task.max_detections) == ("per-label", 0.5, 20)
    assert (task.tiles.grid, task.tiles.overlap, task.tiles.inputs_per_image) == ((3, 2), 0.3, 7)


def test_run_flags_replace_the_spec_files_mapping(tmp_path):
    spec_file = tmp_path / "job.yaml"
    spec_file.write_text("tasks:\n  - {labels: [car, bus], queries: {bus: [coach]},"
                         " label_thresholds: {bus: 0.4}}\n")
    (task,) = _run_spec(tmp_path, spec_file=spec_file).tasks
    assert (task.queries, task.label_thresholds) == ({"bus": ["coach"]}, {"bus": 0.4})
    (task,) = _run_spec(tmp_path, "--query", "car=sedan", spec_file=spec_file).tasks
    assert (task.queries, task.label_thresholds) == ({"car": ["sedan"]}, {"bus": 0.4})


@pytest.mark.parametrize(("flags", "message"), [
    (["--query", "car"], "argument --query: 'car': give LABEL=VALUE"),
    (["--query", "=automobile"], "argument --query: '=automobile': give LABEL=VALUE"),
    (["--label-threshold", "car="], "argument --label-threshold: 'car=': give LABEL=VALUE"),
    (["--label-threshold", "car=high"],
     "argument --label-threshold: 'car=high': the score after '=' must be a number"),
    (["--tiles", "3by2"], "argument --tiles: '3by2': give COLUMNSxROWS, e.g. 2x2 or 3x2"),
    (["--tiles", "x2"], "argument --tiles: 'x2': give COLUMNSxROWS"),
    (["--subset", "some"], "argument --subset: 'some': a number of inputs (500), a percentage"),
])
def test_malformed_pairs_exit_2_naming_the_flag(flags, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["run", *flags])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_pairs_the_spec_refuses_name_the_field(tmp_path):
    from labeler.config import SpecError

    with pytest.raises(SpecError, match=r"tasks\.0\.queries: 'bike' is not one of labels"):
        _run_spec(tmp_path, "--labels", "car", "--query", "bike=bicycle")
    with pytest.raises(SpecError, match=r"tasks\.0\.label_thresholds\.car"):
        _run_spec(tmp_path, "--labels", "car", "--label-threshold", "car=1.5")


@pytest.mark.parametrize(("value", "count", "fraction"), [
    ("500", 500, None), ("2.5%", None, 0.025), ("0.01", None, 0.01), ("1.0", None, 1.0)])
def test_subset_flag_takes_a_count_a_percentage_or_a_fraction(tmp_path, value, count, fraction):
    subset = _run_spec(tmp_path, "--labels", "car", "--subset", value,
                       "--subset-seed", "4").input.subset
    assert (subset.count, subset.fraction, subset.seed) == (count, fraction, 4)


def test_a_subset_over_the_whole_names_the_field(tmp_path):
    with pytest.raises(SpecError, match=r"input\.subset\.fraction: .*less than or equal to 1"):
        _run_spec(tmp_path, "--labels", "car", "--subset", "150%")


def test_serve_flags_reach_the_served_model():
    args = build_parser().parse_args(["serve", "--task", "detect", "--family", "owlv2",
                                      "--model", "m", *ONTOLOGY])
    (model,) = load_serve_spec(None, **serve_overrides(args)).models
    assert model.queries == {"car": ["automobile", "auto"],
                             "cyclist": ["a person riding a bicycle"]}
    assert model.label_thresholds == {"cyclist": 0.25}
    assert model.templates == ["a photo of a {}", "{}"]
    assert (model.nms, model.nms_threshold, model.max_detections) == ("per-label", 0.5, 20)
    assert (model.tiles.grid, model.tiles.overlap) == ((3, 2), 0.3)


def test_serve_flags_set_the_defaults_of_video_requests():
    args = build_parser().parse_args([
        "serve", "--task", "detect", "--family", "owlv2", "--model", "m", "--labels", "car",
        "--sample-fps", "5", "--min-change", "0.03", "--track-iou", "0.4",
        "--track-max-missed", "2"])
    spec = load_serve_spec(None, **serve_overrides(args))
    assert spec.video_sampling.sampling() == Sampling("fps", fps=5.0, min_change=0.03)
    assert spec.models[0].video_track == TrackingSpec(iou=0.4, max_missed=2)
    clips = build_parser().parse_args([
        "serve", "--task", "video-caption", "--family", "qwen2_vl", "--model", "m",
        "--clip-seconds", "10", "--clip-fps", "2"])
    assert load_serve_spec(None, **serve_overrides(clips)).video_clip == ClipSpec(seconds=10,
                                                                                 fps=2)
    both = build_parser().parse_args([
        "serve", "--task", "detect", "--family", "owlv2", "--model", "m", "--labels", "car",
        "--sample-fps", "5", "--every-n-frames", "3"])
    with pytest.raises(SpecError, match="video_sampling: .*give one sampling mode"):
        load_serve_spec(None, **serve_overrides(both))


def test_serve_flags_serve_detect_by_example_with_or_without_a_query_image(tmp_path):
    query = tmp_path / "red_mug.png"
    query.write_bytes(b"png")
    base = ["serve", "--task", "detect-by-example", "--family", "owlv2", "--model", "m"]
    (model,) = load_serve_spec(None, **serve_overrides(build_parser().parse_args(
        [*base, "--query-image", str(query)]))).models
    assert model.query_image == str(query) and not model.examples_per_request
    (model,) = load_serve_spec(None, **serve_overrides(build_parser().parse_args(base))).models
    assert model.query_image is None and model.examples_per_request


def test_query_box_flag(tmp_path, capsys):
    from labeler.testing.samples import synthetic_image

    query = tmp_path / "mug.png"
    synthetic_image(64, 48, seed=1).save(query)
    args = build_parser().parse_args([
        "run", "--input", str(tmp_path), "--output", str(tmp_path / "out"),
        "--task", "detect-by-example", "--family", "owlv2", "--model", "m",
        "--query-image", str(query), "--query-box", "4,5,30.5,40"])
    (task,) = _spec_from_args(args).tasks
    assert task.query_box == (4.0, 5.0, 30.5, 40.0)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--query-box", "4,5,30"])
    assert "'4,5,30': give X0,Y0,X1,Y1 in pixels" in capsys.readouterr().err
    args.query_box = [4, 5, 70, 40]
    with pytest.raises(SpecError, match="is not a box inside the 64x48 query image"):
        _spec_from_args(args)


def test_tiny_models_refuses_an_unknown_family_before_building_any(tmp_path, capsys):
    code = main(["tiny-models", str(tmp_path / "models"), "--families", "owlv2,owlv3"])
    assert code == 2
    assert capsys.readouterr().err == (
        "error: --families 'owlv2,owlv3': not a family: owlv3; give some of owlv2, florence2, "
        "blip2, qwen2_vl, ovis2, comma-separated\n")
    assert not (tmp_path / "models").exists()


@pytest.mark.parametrize(("argv", "lines"), [
    (["run"], ["input: Field required (give --input, or input: in a spec file)",
               "tasks: Field required (give --task, --family and --model, or tasks: in a "
               "spec file)",
               "output: Field required (give --output, or output: in a spec file)"]),
    (["run", "--input", "in", "--output", "out", "--task", "detect", "--family", "owlv2"],
     ["tasks.0.model.source: Field required (--model)"]),
    (["run", "--input", "in", "--output", "out", "--model", "m", "--family", "owlv2"],
     ["tasks.0.task: Field required (--task)"]),
    (["serve"], ["models: Field required (give --task, --family and --model, or models: in "
                 "a config file)"]),
    (["serve", "--task", "detect", "--model", "m"],
     ["models.0.model.family: Field required (--family)"]),
])
def test_a_required_field_left_out_names_its_flag(argv, lines, capsys):
    """A job given by flags alone said 'tasks.0.model.source: Field required', a field of a
    spec file the user never wrote, instead of the flag to add."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    for line in lines:
        assert f"\n  {line}\n" in err + "\n", err


@pytest.mark.parametrize(("argv", "message"), [
    (["run", "--input", "in", "--lables", "cat,dog"],
     "labeler run: error: unrecognized arguments: --lables (did you mean --labels?)"),
    (["run", "--treshold=0.2"],
     "labeler run: error: unrecognized arguments: --treshold=0.2 (did you mean --threshold?)"),
    (["export", "job", "--format", "coco", "--out", "x", "--min-socre", "0.3"],
     "labeler export: error: unrecognized arguments: --min-socre (did you mean --min-score?)"),
    (["stats", "job", "--xyzzy"], "labeler stats: error: unrecognized arguments: --xyzzy\n"),
])
def test_a_mistyped_flag_exits_2_naming_the_flag_meant(argv, message, capsys):
    """`labeler run --lables cat` said only 'labeler: error: unrecognized arguments:
    --lables' under the usage of `labeler`, not of `labeler run`."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_a_spec_indented_with_tabs_says_so_naming_the_file(tmp_path, capsys):
    """PyYAML's 'found character '\\t' that cannot start any token in "<unicode string>"'
    named neither the file nor the fix."""
    spec = tmp_path / "job.yaml"
    spec.write_text("input:\n\tpath: images\n")
    assert main(["run", str(spec)]) == 2
    err = capsys.readouterr().err
    assert f"in {str(spec)!r}, line 2, column 1:" in err
    assert err.rstrip().endswith(
        "(YAML indents with spaces, not tabs: replace the tabs with spaces)")
