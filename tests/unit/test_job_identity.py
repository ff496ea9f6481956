"""A rerun resumes its own output and no other job's: the job identity stored in _job.json."""

import json

import pytest

from labeler.config import JobSpec, load_job_spec
from labeler.jobs.identity import (content_digests, fingerprint, input_identities, job_identity,
                                   legacy_fingerprint)
from labeler.sinks.parquet import OutputConflict, ShardedParquetSink, describe_differences
from labeler.sources import plan_source


@pytest.fixture
def images(tmp_path):
    from labeler.testing.samples import make_sample_images

    make_sample_images(tmp_path / "images", count=3, bad=False)
    return tmp_path / "images"


def _spec(images, tmp_path, **flags):
    flags = {"labels": ["cat", "dog"], **flags}
    return load_job_spec(None, input=str(images), output=str(tmp_path / "out"), task="detect",
                         family="owlv2", model="google/owlv2-base-patch16-ensemble", **flags)


def _sink(spec, **kw) -> ShardedParquetSink:
    """The output's sink as labeler run opens it (labeler.jobs.runner.run_job)."""
    plan = plan_source(spec.input.path, spec.input.effective_files_per_shard, spec.input.media)
    inputs = input_identities(plan.items)
    identity = job_identity(spec, inputs, content_digests(spec, plan.items))
    return ShardedParquetSink(spec.output.path, {0: len(plan.items)}, ["detect"],
                              fingerprint(identity), identity=identity,
                              legacy_fingerprint=lambda: legacy_fingerprint(spec, inputs), **kw)


def test_fields_at_their_default_do_not_change_the_job(images, tmp_path):
    """Setting a field to its default is the same job as leaving it out, which is also
    what lets a later labeler, with new defaulted fields, resume this one's outputs."""
    _sink(_spec(images, tmp_path))
    assert _sink(_spec(images, tmp_path, threshold=0.1, preprocess="processor",
                       batch_size=32)).pending_shards() == {0}
    stored = json.loads((tmp_path / "out" / "_job.json").read_text())
    assert stored["identity"]["tasks"] == [{"task": "detect", "labels": ["cat", "dog"],
                                            "model": {"family": "owlv2", "source":
                                                      "google/owlv2-base-patch16-ensemble"}}]
    assert stored["identity"]["inputs"]["count"] == 3


def test_how_a_task_runs_is_not_part_of_the_job(images, tmp_path):
    """model.compile and the resources change how fast rows come, not the rows: a job
    started without --compile resumes with it, and the other way round, and an output of an
    older labeler resumes with it too."""
    _sink(_spec(images, tmp_path))
    assert _sink(_spec(images, tmp_path, compile=True, num_gpus=1,
                       batch_size=64)).pending_shards() == {0}
    plain, compiled = _spec(images, tmp_path), _spec(images, tmp_path, compile=True)
    assert compiled.tasks[0].model.compile
    inputs = [["a", "file:///a.jpg", None]]
    assert job_identity(plain, inputs) == job_identity(compiled, inputs)
    assert legacy_fingerprint(plain, inputs) == legacy_fingerprint(compiled, inputs)


def test_another_job_is_refused_naming_what_differs(images, tmp_path):
    _sink(_spec(images, tmp_path))
    with pytest.raises(OutputConflict) as err:
        _sink(_spec(images, tmp_path, threshold=0.5, labels=["cat"]))
    message = str(err.value)
    assert "holds results of a different job" in message
    assert "tasks.0.threshold: the default there, 0.5 now" in message
    assert "tasks.0.labels: ['cat', 'dog'] there, ['cat'] now" in message
    assert "--overwrite" in message

    (images / "new.jpg").write_bytes((images / "sample_000.jpg").read_bytes())
    with pytest.raises(OutputConflict, match=r"\(inputs: 3 there, 4 now\)"):
        _sink(_spec(images, tmp_path))


def test_an_output_of_an_older_labeler_resumes_and_learns_its_identity(images, tmp_path):
    """_job.json as written before identities: only the fingerprint of every field."""
    spec = _spec(images, tmp_path)
    plan = plan_source(spec.input.path, spec.input.effective_files_per_shard, "image")
    out = tmp_path / "out"
    out.mkdir()
    (out / "_job.json").write_text(json.dumps({
        "fingerprint": legacy_fingerprint(spec, input_identities(plan.items)),
        "tasks": ["detect"], "shards": 1}))
    assert _sink(spec).pending_shards() == {0}
    assert json.loads((out / "_job.json").read_text())["identity"]["inputs"]["count"] == 3
    with pytest.raises(OutputConflict, match="tasks.0.threshold: the default there, 0.7 now"):
        _sink(_spec(images, tmp_path, threshold=0.7))

    (out / "_job.json").write_text(json.dumps({"fingerprint": "from another job"}))
    with pytest.raises(OutputConflict, match=r"\(other inputs or task parameters\)"):
        _sink(spec)


def test_differences_name_nested_fields_and_inputs():
    stored = {"version": 2, "input": {"files_per_shard": 256},
              "tasks": [{"task": "caption", "generation": {"max_new_tokens": 64}}],
              "inputs": {"count": 10, "sha256": "a"}}
    current = {"version": 2, "input": {"files_per_shard": 256},
               "tasks": [{"task": "caption"}], "inputs": {"count": 10, "sha256": "b"}}
    assert describe_differences(stored, current) == (
        "inputs: other files, ids or prompts (10 both times); "
        "tasks.0.generation.max_new_tokens: 64 there, the default now")
    assert describe_differences(None, current) == "other inputs or task parameters"
    # An option turned on with its defaults is named too.
    assert describe_differences({"tasks": [{"task": "detect", "track": {}}]},
                                {"tasks": [{"task": "detect"}]}) == (
        "tasks.0.track: on, with its defaults there, off now")
    # An option left out is off, not at its defaults: once, for the whole option (it was
    # "tasks.0.track.iou: 0.2 there, the default now; tasks.0.track.max_missed: ...").
    tracked = {"input": {"subset": {"fraction": 0.1}},
               "tasks": [{"task": "detect", "track": {"max_missed": 5, "iou": 0.2}}]}
    assert describe_differences(tracked, {"input": {}, "tasks": [{"task": "detect"}]}) == (
        "input.subset: on, {'fraction': 0.1} there, off now; "
        "tasks.0.track: on, {'max_missed': 5, 'iou': 0.2} there, off now")
    assert describe_differences({"tasks": [{"task": "detect"}]}, tracked) == (
        "input.subset: off there, on, {'fraction': 0.1} now; "
        "tasks.0.track: off there, on, {'max_missed': 5, 'iou': 0.2} now")
    # Set both times, with its defaults once: only the field set is named.
    tuned = {"tasks": [{"task": "detect", "track": {"max_missed": 5}}]}
    defaults = {"tasks": [{"task": "detect", "track": {}}]}
    assert describe_differences(tuned, defaults) == (
        "tasks.0.track.max_missed: 5 there, the default now")
    assert describe_differences(defaults, tuned) == (
        "tasks.0.track.max_missed: the default there, 5 now")


def test_a_task_added_or_removed_is_named_as_such_not_as_fields_at_their_default():
    """A second task is not a task whose fields were at their defaults there."""
    one = {"tasks": [{"task": "detect", "labels": ["cat"]}]}
    two = {"tasks": [{"task": "detect", "labels": ["cat"]},
                     {"task": "caption", "name": "captions", "model": {"family": "florence2"}}]}
    assert describe_differences(one, two) == "tasks: 1 there (detect), 2 now (detect, captions)"
    assert describe_differences(two, one) == "tasks: 2 there (detect, captions), 1 now (detect)"
    changed = {"tasks": [{"task": "detect", "labels": ["dog"]}, two["tasks"][1]]}
    assert describe_differences(one, changed) == (
        "tasks: 1 there (detect), 2 now (detect, captions); "
        "tasks.0.labels: ['cat'] there, ['dog'] now")


@pytest.mark.parametrize("content", [b"", b"{not json", b"[1, 2]", b"\xff\xfe"])
def test_an_unreadable_job_manifest_is_refused_by_name(images, tmp_path, content):
    out = tmp_path / "out"
    out.mkdir()
    (out / "_job.json").write_bytes(content)
    with pytest.raises(OutputConflict, match="holds a _job.json that labeler cannot read"):
        _sink(_spec(images, tmp_path))
    assert _sink(_spec(images, tmp_path), overwrite=True).pending_shards() == {0}


def test_the_legacy_fingerprint_is_the_one_older_labelers_wrote():
    """The hash the labeler before identities (1e73c43^, job_fingerprint) wrote for this spec:
    options added since, at their defaults, must not change it, or those outputs stop
    resuming. Setting one does change it."""
    spec = {"input": {"path": "s3://bucket/videos", "media": "video", "sampling": {"fps": 2.0}},
            "tasks": [{"task": "detect", "labels": ["person", "car"], "threshold": 0.2,
                       "model": {"family": "owlv2",
                                 "source": "google/owlv2-base-patch16-ensemble"}}],
            "output": {"path": "/tmp/out"}}
    inputs = [["a.mp4", "s3://bucket/videos/a.mp4", None]]
    written_then = "b3339334240c03f231218a05358d787180312399da5af36f774bbb4bcfc8214e"
    assert legacy_fingerprint(JobSpec.model_validate(spec), inputs) == written_then
    spec["tasks"][0]["nms"] = "per-label"
    assert legacy_fingerprint(JobSpec.model_validate(spec), inputs) != written_then
    spec["tasks"][0]["nms"] = "none"
    spec["input"]["sampling"]["min_change"] = 0.03
    assert legacy_fingerprint(JobSpec.model_validate(spec), inputs) != written_then


def _pseudo_label_spec(images, tmp_path) -> JobSpec:
    return JobSpec.model_validate({
        "input": {"path": str(images)}, "output": {"path": str(tmp_path / "out")},
        "tasks": [{"task": "pseudo-label", "model": {
            "family": "owlv2", "source": "google/owlv2-base-patch16-ensemble"},
            "pseudo_label": {"vocabulary_file": str(tmp_path / "names.txt")}}]})


def test_edited_captions_or_task_files_are_another_job(images, tmp_path):
    """A vocabulary file edited (or a caption, a query image) between runs gave the same
    identity (only the file's path was part of it): the rerun resumed with the old rows."""
    (tmp_path / "names.txt").write_text("cat\ndog\n")
    for k in range(3):
        (images / f"sample_{k:03d}.txt").write_text(f"a cat on a mat {k}")
    spec = _pseudo_label_spec(images, tmp_path)
    assert _sink(spec).pending_shards() == {0}
    assert _sink(spec).pending_shards() == {0}  # unchanged: resumes
    stored = json.loads((tmp_path / "out" / "_job.json").read_text())["identity"]
    assert sorted(stored["contents"]) == ["tasks.0.captions",
                                          "tasks.0.pseudo_label.vocabulary_file"]

    (tmp_path / "names.txt").write_text("cat\nbird\n")
    with pytest.raises(OutputConflict, match=r"\(tasks.0.pseudo_label.vocabulary_file: other "
                                             r"contents\)"):
        _sink(spec)
    (tmp_path / "names.txt").write_text("cat\ndog\n")
    (images / "sample_001.txt").write_text("a dog on a mat")
    with pytest.raises(OutputConflict, match=r"\(tasks.0.captions: other captions\)"):
        _sink(spec)


def test_an_output_written_before_contents_were_hashed_resumes(images, tmp_path):
    """_job.json whose identity holds no `contents` (an older labeler): the same job when
    all else is the same, and it learns the digests, so the next rerun checks them."""
    (tmp_path / "names.txt").write_text("cat\n")
    spec = _pseudo_label_spec(images, tmp_path)
    plan = plan_source(spec.input.path, spec.input.effective_files_per_shard, "image")
    older = job_identity(spec, input_identities(plan.items))
    out = tmp_path / "out"
    out.mkdir()
    (out / "_job.json").write_text(json.dumps({
        "fingerprint": fingerprint(older), "identity": older, "tasks": ["pseudo-label"],
        "shards": 1}))
    assert _sink(spec).pending_shards() == {0}
    assert "contents" in json.loads((out / "_job.json").read_text())["identity"]
    (tmp_path / "names.txt").write_text("dog\n")
    with pytest.raises(OutputConflict, match="vocabulary_file: other contents"):
        _sink(spec)
    # Without contents to hash, the identity is what it was.
    plain = _spec(images, tmp_path)
    assert content_digests(plain, plan.items) == {}


def test_dynamic_resolution_tasks_decode_whole_images_unless_told(images, tmp_path):
    """Qwen2-VL keeps an image's own size up to 12.8 MP and Ovis2 picks its tile grid from
    it: decoded at 1008 px (the default reduction, sized for the fixed-input models), a 12 MP
    photo gave Qwen2-VL 972 visual tokens instead of the documented usage's 15,552."""
    from labeler.config import TaskSpec, decode_side_for_tasks

    def task(family: str, task: str = "caption") -> TaskSpec:
        return TaskSpec(task=task, model={"family": family, "source": "some/model"},
                        **({"labels": ["cat"]} if family == "owlv2" else {}))

    owlv2, florence2, qwen, ovis = (task("owlv2", "detect"), task("florence2"),
                                    task("qwen2_vl"), task("ovis2"))
    assert decode_side_for_tasks(1008, [owlv2, florence2]) == 1008
    assert decode_side_for_tasks(1008, [qwen]) is None
    assert decode_side_for_tasks(1008, [owlv2, ovis]) is None  # one decode serves both
    assert decode_side_for_tasks(1008, [qwen], explicit=True) == 1008
    # Outputs of older labelers decoded them reduced: not resumed with other pixels.
    default = load_job_spec(None, input=str(images), output=str(tmp_path / "out"),
                            task="caption", family="qwen2_vl", model="some/model")
    told = load_job_spec(None, input=str(images), output=str(tmp_path / "out"),
                         task="caption", family="qwen2_vl", model="some/model",
                         decode_min_side=1008)
    assert job_identity(default, [])["input"]["decode_min_side"] is None
    assert "decode_min_side" not in job_identity(told, [])["input"]
