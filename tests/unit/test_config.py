"""Job spec validation: bad specs fail before any work, naming the field and the choices."""

from pathlib import Path

import re

import pytest

from labeler.config import SpecError, TrackingSpec, load_job_spec


def _flags(tmp_path, **kw):
    base = dict(input=str(tmp_path), output=str(tmp_path / "out"), task="detect",
                family="owlv2", model="google/owlv2-base-patch16-ensemble", labels=["cat"])
    base.update(kw)
    return base


def _detect_spec_file(tmp_path, task_lines: str, source: str = "m") -> Path:
    """A job.yaml of one OWLv2 detect task, its other fields given as YAML lines."""
    spec_file = tmp_path / "job.yaml"
    spec_file.write_text(f"""
input: {{path: {tmp_path}}}
output: {{path: {tmp_path}/out}}
tasks:
  - task: detect
    model: {{family: owlv2, source: {source}}}
{task_lines}
""")
    return spec_file


def test_flags_alone_make_a_valid_spec(tmp_path):
    spec = load_job_spec(None, **_flags(tmp_path, threshold=0.25, batch_size=4))
    (task,) = spec.tasks
    assert (task.task, task.model.family, task.labels) == ("detect", "owlv2", ["cat"])
    assert task.threshold == 0.25 and task.resources.batch_size == 4
    assert (task.nms, task.nms_threshold) == ("none", 0.3)
    (task,) = load_job_spec(None, **_flags(tmp_path, nms="per-label", nms_threshold=0.5,
                                           max_detections=20)).tasks
    assert (task.nms, task.nms_threshold, task.max_detections) == ("per-label", 0.5, 20)
    assert spec.input.path == str(tmp_path)


def test_flags_override_the_yaml(tmp_path):
    spec_file = _detect_spec_file(tmp_path, """\
    labels: [cat, dog]
    threshold: 0.2
    resources: {batch_size: 16, concurrency: 2}""", source="some/model")
    spec = load_job_spec(spec_file, threshold=0.5, labels=["bird"])
    (task,) = spec.tasks
    assert task.threshold == 0.5 and task.labels == ["bird"]
    assert task.resources.batch_size == 16 and task.resources.concurrency == 2
    assert task.model.source == "some/model"


@pytest.mark.parametrize("overrides, field, says", [
    (dict(task="detct"), "tasks.0.task", "valid tasks: detect, ground"),
    (dict(family="owl"), "tasks.0.model.family", "valid families: owlv2, florence2"),
    (dict(task="regions"), "tasks.0", "task 'regions' is not available for family 'owlv2'"),
    (dict(labels=[]), "tasks.0", "needs at least one label"),
    (dict(labels=["cat", "cat"]), "tasks.0.labels", "unique"),
    (dict(threshold=1.5), "tasks.0.threshold", "less than or equal to 1"),
    (dict(nms="yes"), "tasks.0.nms", "'none', 'per-label' or 'all'"),
    (dict(nms_threshold=1.5), "tasks.0.nms_threshold", "less than or equal to 1"),
    (dict(max_detections=0), "tasks.0.max_detections", "greater than or equal to 1"),
    (dict(batch_size=0), "tasks.0.resources.batch_size", "greater than or equal to 1"),
    (dict(concurrency=0), "tasks.0.resources.concurrency", "a number of actors >= 1"),
    (dict(concurrency=[4, 1]), "tasks.0.resources.concurrency", "1 <= min <= max"),
    (dict(input="/no/such/folder"), "input.path", "does not exist"),
    (dict(input="s3://bucket/images/*.png"), "input.path", "globs match local files only"),
])
def test_bad_fields_are_named(tmp_path, overrides, field, says):
    with pytest.raises(SpecError) as err:
        load_job_spec(None, **_flags(tmp_path, **overrides))
    message = str(err.value)
    assert f"{field}: " in message and says in message, message


def test_unknown_yaml_field_is_rejected_with_its_path_and_what_was_meant(tmp_path):
    spec_file = _detect_spec_file(tmp_path, "    labels: [cat]\n    thresold: 0.3\n"
                                            "    resources: {batch: 4}\n    colour: red")
    with pytest.raises(SpecError) as err:
        load_job_spec(spec_file)
    lines = str(err.value).splitlines()
    assert "  tasks.0.thresold: unknown field; did you mean 'threshold'?" in lines
    assert "  tasks.0.resources.batch: unknown field; did you mean 'batch_size'?" in lines
    (colour,) = [line for line in lines if "colour" in line]
    assert colour.startswith("  tasks.0.colour: unknown field; valid fields here: task, model, ")
    assert "threshold" in colour and "resources" in colour


def test_missing_and_malformed_spec_files(tmp_path):
    with pytest.raises(SpecError, match="does not exist"):
        load_job_spec(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("tasks: [unclosed")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_job_spec(bad)


def test_the_readme_spec_file_is_a_valid_job_spec(tmp_path, monkeypatch):
    """The annotated job.yaml in the README is what users copy: it must validate as written
    (run where its ./images folder exists)."""
    import re
    from pathlib import Path

    import yaml

    from labeler.config import JobSpec

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = re.search(r"```yaml\n# job.yaml\n(.*?)```", readme, re.DOTALL)
    assert block, "README lost its job.yaml example"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "images").mkdir()
    spec = JobSpec(**yaml.safe_load(block.group(1)))
    assert spec.output.retry_errors is False and spec.tasks[0].labels == ["cat", "dog",
                                                                          "traffic light"]


def test_an_ontology_gives_labels_their_queries_and_thresholds(tmp_path):
    spec_file = _detect_spec_file(tmp_path, """\
    labels: [person, car, cyclist]
    queries: {car: [" car ", automobile, car], cyclist: ["a person riding a bicycle"]}
    label_thresholds: {cyclist: 0.25}
    threshold: 0.15""")
    (task,) = load_job_spec(spec_file).tasks
    assert task.label_queries() == [["person"], ["car", "automobile"],
                                     ["a person riding a bicycle"]]
    assert [task.threshold_for(label) for label in task.labels] == [0.15, 0.15, 0.25]


@pytest.mark.parametrize("task_lines, field, says", [
    ("    labels: [car]\n    queries: {bus: [bus]}", "tasks.0.queries",
     "'bus' is not one of labels ['car']"),
    ("    labels: [car]\n    queries: {car: []}", "tasks.0.queries", "a non-empty list"),
    ("    labels: [car]\n    queries: {car: [' ']}", "tasks.0.queries", "a non-empty list"),
    ("    labels: [car, truck]\n    queries: {truck: [lorry, Car]}", "tasks.0.queries",
     "the query 'Car' asks for both 'car' and 'truck'"),
    ("    labels: [car]\n    label_thresholds: {bus: 0.2}", "tasks.0.label_thresholds",
     "'bus' is not one of labels"),
    ("    labels: [car]\n    label_thresholds: {car: 1.5}", "tasks.0.label_thresholds.car",
     "less than or equal to 1"),
    ("    labels: [car]\n    templates: ['a photo of a']", "tasks.0.templates",
     "template 'a photo of a' must hold exactly one '{}'"),
    ("    labels: [car]\n    templates: []", "tasks.0.templates", "at least 1 item"),
])
def test_bad_ontologies_are_named(tmp_path, task_lines, field, says):
    with pytest.raises(SpecError) as err:
        load_job_spec(_detect_spec_file(tmp_path, task_lines))
    assert f"{field}: " in str(err.value) and says in str(err.value), str(err.value)


@pytest.mark.parametrize("overrides, says", [
    (dict(task="ground"), "templates apply to task 'detect' only"),
    (dict(family="florence2"), "templates (prompt ensembling) average OWLv2's text embeddings"),
])
def test_templates_are_for_owlv2_detect_only(tmp_path, overrides, says):
    with pytest.raises(SpecError) as err:
        load_job_spec(None, **_flags(tmp_path, templates=["a photo of a {}"], **overrides))
    assert "tasks.0: " in str(err.value) and says in str(err.value), str(err.value)
    (task,) = load_job_spec(None, **_flags(tmp_path, templates=["a photo of a {}", "{}"])).tasks
    assert task.templates == ["a photo of a {}", "{}"]


def test_a_labels_flag_dropping_a_label_with_queries_is_named(tmp_path):
    """--labels replaces the file's labels: queries of a label no longer there are refused
    rather than silently ignored."""
    spec_file = _detect_spec_file(tmp_path, "    labels: [car, bus]\n    queries: {bus: [coach]}")
    with pytest.raises(SpecError, match=r"tasks\.0\.queries: 'bus' is not one of labels"):
        load_job_spec(spec_file, labels=["car"])


def test_retry_errors_flag_reaches_the_spec(tmp_path):
    from labeler.cli import _spec_from_args, build_parser

    args = build_parser().parse_args([
        "run", "--input", str(tmp_path), "--output", str(tmp_path / "out"), "--task", "detect",
        "--family", "owlv2", "--model", "m", "--labels", "cat,dog", "--retry-errors"])
    spec = _spec_from_args(args)
    assert spec.output.retry_errors is True and spec.output.overwrite is False


def _task_from_flags(tmp_path, *flags):
    """`labeler run`'s task (OWLv2 detect) with these flags added."""
    from labeler.cli import _spec_from_args, build_parser

    args = build_parser().parse_args([
        "run", "--input", str(tmp_path), "--output", str(tmp_path / "out"), "--task",
        "detect", "--family", "owlv2", "--model", "m", "--labels", "cat", *flags])
    return _spec_from_args(args).tasks[0]


def _resources_from_flags(tmp_path, *flags):
    """The resources of `labeler run`'s task with these flags added."""
    return _task_from_flags(tmp_path, *flags).resources


def test_concurrency_is_a_number_or_a_growing_range(tmp_path):
    def resources(*flags):
        return _resources_from_flags(tmp_path, *flags)

    fixed = resources("--concurrency", "3")
    assert (fixed.concurrency, fixed.min_actors, fixed.max_actors) == (3, 3, 3)
    growing = resources("--concurrency", "1-8")
    assert (growing.concurrency, growing.min_actors, growing.max_actors) == ((1, 8), 1, 8)
    with pytest.raises(SystemExit):  # argparse: not a number or MIN-MAX
        resources("--concurrency", "many")


def test_actor_cpus_and_torch_threads_set_an_actors_threads(tmp_path, tiny_owlv2):
    """--actor-cpus and --torch-threads reach the task's resources, and the model actor
    runs torch with torch_threads, else with its reserved cores (at least 1); a GPU
    actor's spec too (each of its batch threads gets a team of that size)."""
    import torch

    from labeler.actors.predictor import build_adapter
    from labeler.cli import _spec_from_args, build_parser

    def task(*flags):
        args = build_parser().parse_args([
            "run", "--input", str(tmp_path), "--output", str(tmp_path / "out"), "--task",
            "detect", "--family", "owlv2", "--model", tiny_owlv2, "--labels", "cat", *flags])
        return _spec_from_args(args).tasks[0]

    before = torch.get_num_threads()
    try:
        for flags, threads in [((), 1), (("--actor-cpus", "0.5"), 1),
                               (("--actor-cpus", "2"), 2), (("--torch-threads", "3"), 3),
                               (("--actor-cpus", "0.5", "--torch-threads", "2"), 2),
                               (("--num-gpus", "1", "--actor-cpus", "3"), 3)]:
            spec = task(*flags)
            build_adapter(spec, torch.device("cpu"))
            assert torch.get_num_threads() == threads, flags
        assert task("--actor-cpus", "0.5").resources.num_cpus == 0.5
    finally:
        torch.set_num_threads(before)
    with pytest.raises(SpecError, match="torch_threads"):
        task("--torch-threads", "0")


@pytest.mark.parametrize(("task", "family", "extra", "resources", "batch"), [
    ("detect", "owlv2", {"labels": ["cat"]}, {"num_gpus": 1}, 64),
    ("caption", "florence2", {}, {"num_gpus": 1}, 128),
    ("caption", "qwen2_vl", {}, {"num_gpus": 1}, 128),
    ("caption", "qwen2_vl", {}, {"num_gpus": 0.5}, 64),  # two actors share the GPU's memory
    ("detect", "owlv2", {"labels": ["cat"]}, {"num_gpus": 2}, 64),
    ("caption", "blip2", {}, {"num_gpus": 1}, 32),
    ("caption", "ovis2", {}, {"num_gpus": 1}, 32),
    # a tiled image is 5 model inputs: 64 // 5
    ("detect", "owlv2", {"labels": ["cat"], "tiles": {"grid": [2, 2]}}, {"num_gpus": 1}, 12),
    ("caption", "florence2", {}, {"num_gpus": 1, "batch_size": 4}, 4),  # given: kept
    ("caption", "florence2", {}, {}, 8),  # on CPU
    ("video-caption", "qwen2_vl", {}, {"num_gpus": 1}, 8),  # rows are clips of frames
])
def test_a_gpu_actor_without_a_batch_size_gets_its_familys(task, family, extra, resources,
                                                           batch):
    from labeler.config import TaskSpec

    spec = TaskSpec(task=task, model={"family": family, "source": "m"}, resources=resources,
                    **extra)
    assert spec.resources.batch_size == batch
    # as a worker re-reads it
    assert TaskSpec.model_validate_json(spec.model_dump_json()).resources.batch_size == batch


def test_the_batch_size_flag_and_the_gpu_default(tmp_path):
    def task(*flags):
        return _task_from_flags(tmp_path, *flags)

    assert task().resources.batch_size == 8
    assert task("--num-gpus", "1").resources.batch_size == 64
    assert task("--num-gpus", "1", "--batch-size", "16").resources.batch_size == 16
    with pytest.raises(SpecError, match="tasks.0.resources.batch_size"):
        task("--batch-size", "0")


def test_concurrent_batches_flag_reaches_the_resources(tmp_path):
    def task(*flags):
        return _task_from_flags(tmp_path, *flags)

    assert task().batches_at_once == 1  # on CPU, by default
    assert task("--num-gpus", "1").batches_at_once == 2
    given = task("--num-gpus", "1", "--concurrent-batches", "3")
    assert (given.resources.concurrent_batches, given.batches_at_once) == (3, 3)
    for bad in ("0", "9"):
        with pytest.raises(SpecError, match="tasks.0.resources.concurrent_batches"):
            task("--concurrent-batches", bad)


def test_compile_flag_reaches_the_model_spec_and_the_adapter(tmp_path, tiny_owlv2):
    """--compile sets model.compile (default off); an OWLv2 actor built from it holds the
    compiled vision tower; a generative task takes it too (its static cache:
    tests/models/test_generative_compile.py)."""
    import torch

    from labeler.actors.predictor import build_adapter
    from labeler.cli import _spec_from_args, build_parser

    def task(*flags, family="owlv2", model=tiny_owlv2, extra=("--labels", "cat")):
        args = build_parser().parse_args([
            "run", "--input", str(tmp_path), "--output", str(tmp_path / "out"), "--task",
            "detect" if family == "owlv2" else "caption", "--family", family, "--model", model,
            *extra, *flags])
        return _spec_from_args(args).tasks[0]

    assert task().model.compile is False
    compiled = task("--compile")
    assert compiled.model.compile is True
    assert build_adapter(compiled, torch.device("cpu")).compiled_embedder is not None
    from labeler.jobs.runner import _task_line  # what a dry run prints of the task

    assert f"owlv2 {tiny_owlv2} (compiled), batch 8" in _task_line(compiled)
    assert "(compiled)" not in _task_line(task())
    assert build_adapter(task(), torch.device("cpu")).compiled_embedder is None
    caption = task("--compile", family="qwen2_vl", model="some/checkpoint", extra=())
    assert caption.model.compile is True


@pytest.mark.parametrize("name", ["_boxes", ".hidden", "..", "a/b", ""])
def test_a_task_name_readers_would_skip_or_that_leaves_the_output_is_refused(tmp_path, name):
    """Readers (export, stats, eval, ...) skip folders starting with _ or . (staging and
    reports), and '..' would write outside the output."""
    spec_file = _detect_spec_file(tmp_path, f"    labels: [cat]\n    name: '{name}'")
    with pytest.raises(SpecError, match=r"tasks\.0\.name: String should match pattern"):
        load_job_spec(spec_file)
    assert load_job_spec(_detect_spec_file(
        tmp_path, "    labels: [cat]\n    name: 0_boxes.v2-x")).tasks[0].name == "0_boxes.v2-x"


@pytest.mark.parametrize("task_lines, says", [
    ("    labels: [cat]\n    query_image: cat.jpg", "task 'detect' takes no query_image"),
    ("    labels: [cat]\n    query_box: [0, 0, 5, 5]", "task 'detect' takes no query_image"),
    ("    labels: [cat]\n    generation: {max_new_tokens: 20}",
     "generation applies to the generative families"),
    ("    labels: [cat]\n    nms_threshold: 0.5", "nms_threshold is the IoU of nms, which is "
                                                 "'none': set nms"),
])
def test_options_the_task_would_never_read_are_refused(tmp_path, task_lines, says):
    """Accepted, they changed nothing but the job's identity (blocking a resume)."""
    with pytest.raises(SpecError, match=re.escape(says)):
        load_job_spec(_detect_spec_file(tmp_path, task_lines))
    spec = load_job_spec(_detect_spec_file(tmp_path, "    labels: [cat]\n    nms: all\n"
                                                     "    nms_threshold: 0.5"))
    assert spec.tasks[0].nms_threshold == 0.5


def test_generation_and_preprocess_flags_apply_to_the_families_that_take_them(tmp_path):
    spec_file = tmp_path / "two.yaml"
    spec_file.write_text(f"""
input: {{path: {tmp_path}}}
output: {{path: {tmp_path}/out}}
tasks:
  - {{task: caption, model: {{family: florence2, source: m}}}}
  - {{task: detect, labels: [cat], model: {{family: owlv2, source: m}}}}
""")
    caption, detect = load_job_spec(spec_file, max_new_tokens=20, preprocess="fast").tasks
    assert (caption.generation.max_new_tokens, caption.preprocess) == (20, "processor")
    assert detect.preprocess == "fast"
    with pytest.raises(SpecError, match=re.escape("--max-new-tokens applies to generative "
                                                  "(florence2, blip2, qwen2_vl, ovis2) tasks, "
                                                  "and the job has none")):
        load_job_spec(None, **_flags(tmp_path, max_new_tokens=20))
    with pytest.raises(SpecError, match=re.escape("--preprocess applies to owlv2 tasks, and the "
                                                  "job has none")):
        load_job_spec(None, **_flags(tmp_path, task="caption", family="florence2", labels=None,
                                     preprocess="fast"))
    spec_file.write_text(spec_file.read_text().replace("florence2, source: m}",
                                                       "florence2, source: m}, preprocess: fast"))
    with pytest.raises(SpecError, match=re.escape("tasks.0: preprocess: 'fast' applies to "
                                                  "family owlv2")):
        load_job_spec(spec_file)


def test_track_flags_apply_to_the_box_tasks_of_a_video_job(tmp_path):
    """--track and its settings on a video job with a caption task beside the detector: the
    detector is tracked (every task was given `track`, which a caption task refuses)."""
    spec_file = tmp_path / "video.yaml"
    spec_file.write_text(f"""
input: {{path: {tmp_path}, media: video}}
output: {{path: {tmp_path}/out}}
tasks:
  - {{task: detect, labels: [car], model: {{family: owlv2, source: m}}}}
  - {{task: caption, model: {{family: florence2, source: m}}}}
""")
    detect, caption = load_job_spec(spec_file, track=True, track_max_missed=5).tasks
    assert detect.track == TrackingSpec(max_missed=5) and caption.track is None
    detect, caption = load_job_spec(spec_file, track_iou=0.5).tasks  # implies --track
    assert detect.track == TrackingSpec(iou=0.5) and caption.track is None
    assert load_job_spec(spec_file, track=None).tasks[0].track is None
    spec_file.write_text(spec_file.read_text().replace("  - {task: detect, labels: [car], "
                                                       "model: {family: owlv2, source: m}}\n",
                                                       ""))
    with pytest.raises(SpecError, match=re.escape(
            "--track applies to box (detect, ground, detect-by-example) tasks, and the job "
            "has none")):
        load_job_spec(spec_file, track=True)


@pytest.mark.parametrize("task_lines, field", [
    ("    labels: [cat]\n    threshold: true", "tasks.0.threshold"),
    ("    labels: [cat]\n    resources: {batch_size: true}", "tasks.0.resources.batch_size"),
    ("    labels: [cat]\n    max_detections: false", "tasks.0.max_detections"),
])
def test_true_or_false_for_a_number_is_refused(tmp_path, task_lines, field):
    """pydantic reads true as 1: `threshold: true` would keep only boxes scoring above 1."""
    with pytest.raises(SpecError, match=re.escape(f"{field}: a number is needed, not ")):
        load_job_spec(_detect_spec_file(tmp_path, task_lines))
