"""Spec errors of video and pseudo-label jobs: refused before any work, naming the field."""

import re

import pytest

from labeler.config import SpecError, load_job_spec
from labeler.jobs.runner import run_job


def _spec(tmp_path, **overrides):
    fields = {"input": str(tmp_path), "output": str(tmp_path / "out"), "task": "detect",
              "family": "owlv2", "model": "m", "labels": ["cat"]}
    return load_job_spec(None, **{**fields, **overrides})


@pytest.mark.parametrize("overrides, message", [
    ({"media": "video", "sample_fps": 2.0, "keyframes": True},
     "input.sampling: give one sampling mode, not fps and keyframes"),
    ({"media": "video", "start_s": 5.0, "end_s": 2.0}, "end_s (2.0) must be after start_s"),
    # Accepted, these failed every video later (a Fraction of infinity, a rate rounded to 0).
    ({"media": "video", "end_s": float("inf")}, "input.sampling.end_s: Input should be a finite"),
    ({"media": "video", "start_s": float("inf")}, "input.sampling.start_s: Input should be a "
                                                  "finite"),
    ({"media": "video", "sample_fps": 1e-7}, "input.sampling.fps: Input should be greater than "
                                             "or equal to 0.000001"),
    ({"sample_fps": 2.0}, "input.sampling and input.clip apply to media: video only"),
    ({"task": "video-caption", "family": "qwen2_vl", "labels": None},
     "labels video clips; set input.media: video"),
    ({"media": "video", "task": "video-caption", "family": "qwen2_vl", "labels": None},
     "needs input.clip.seconds (--clip-seconds)"),
    ({"media": "video", "clip_seconds": 10.0}, "no task takes clips"),
    ({"media": "video", "task": "video-caption", "family": "qwen2_vl", "labels": None,
      "clip_seconds": 10.0, "sample_fps": 1.0}, "clip tasks sample inside each clip"),
    ({"media": "video", "clip_seconds": -1.0}, "input.clip.seconds"),
    ({"media": "video", "min_change": 0.0}, "input.sampling.min_change"),
    ({"media": "video", "min_change": 2.0}, "input.sampling.min_change"),
    ({"media": "video", "task": "video-caption", "family": "qwen2_vl", "labels": None,
      "clip_seconds": 10.0, "min_change": 0.03}, "clip tasks sample inside each clip"),
    ({"image_threshold": 0.5}, "--image-threshold applies to pseudo-label tasks, and the job "
                               "has none"),
    ({"box_threshold": 0.5}, "--box-threshold applies to pseudo-label tasks, and the job has "
                             "none"),
    ({"task": "pseudo-label", "labels": None, "vocabulary": "/nonexistent/names.txt"},
     "file '/nonexistent/names.txt' does not exist"),
])
def test_bad_video_and_pseudo_label_specs_name_the_field(tmp_path, overrides, message):
    with pytest.raises(SpecError) as err:
        _spec(tmp_path, **overrides)
    assert message in str(err.value)


def test_min_change_flag_sets_the_sampling_option(tmp_path):
    spec = _spec(tmp_path, media="video", every_n_frames=2, min_change=0.03)
    assert spec.input.sampling.sampling().min_change == 0.03


def test_caption_from_must_name_an_earlier_task(tmp_path):
    spec = tmp_path / "job.yaml"
    spec.write_text(f"""
input: {{path: {tmp_path}}}
output: {{path: {tmp_path / 'out'}}}
tasks:
  - {{task: pseudo-label, model: {{family: owlv2, source: m}},
      pseudo_label: {{caption_from: caption}}}}
  - {{task: caption, model: {{family: florence2, source: m}}}}
""")
    with pytest.raises(SpecError, match=r"tasks\.0\.pseudo_label\.caption_from: 'caption' "
                                        r"is not an earlier task"):
        load_job_spec(spec)


def test_a_caption_column_no_input_has_is_refused_before_any_output(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    (images / "a.jpg").write_bytes(b"not decoded before the check")
    spec = load_job_spec(None, input=str(images), output=str(tmp_path / "out"),
                         task="pseudo-label", family="owlv2", model="m",
                         caption_column="alt_text")
    with pytest.raises(SpecError, match=r"tasks\.0\.pseudo_label\.caption_column: no input "
                                        r"has a column 'alt_text'"):
        run_job(spec, progress=False)
    assert not (tmp_path / "out").exists()  # nothing written, Ray never started


def _two_tasks(tmp_path, first: str, pseudo: str = "caption_from: caption") -> str:
    spec = tmp_path / "job.yaml"
    spec.write_text(f"""
input: {{path: {tmp_path}}}
output: {{path: {tmp_path / 'out'}}}
tasks:
  - {first}
  - {{task: pseudo-label, model: {{family: owlv2, source: m}}, threshold: 0.2,
      pseudo_label: {{{pseudo}}}}}
""")
    return str(spec)


def test_caption_from_must_name_a_task_that_writes_a_caption(tmp_path):
    """A detect task writes boxes, no text: every image would be dropped as uncaptioned."""
    spec = _two_tasks(tmp_path, "{task: detect, name: caption, labels: [cat], "
                                "model: {family: owlv2, source: m}}")
    with pytest.raises(SpecError, match=r"tasks\.1\.pseudo_label\.caption_from: 'caption' is "
                                        r"a detect task, which writes no caption; name a task "
                                        r"of kind caption, ocr, ask"):
        load_job_spec(spec)


@pytest.mark.parametrize("pseudo, message", [
    ("caption_from: caption, use_captions: false", "caption_from: a caption task is named but "
                                                   "use_captions is false"),
    ("caption_from: caption, caption_column: alt", "caption_column: the captions come from the "
                                                   "caption_from task"),
])
def test_caption_options_that_would_be_ignored_are_refused(tmp_path, pseudo, message):
    spec = _two_tasks(tmp_path, "{task: caption, model: {family: florence2, source: m}}", pseudo)
    with pytest.raises(SpecError, match=re.escape(message)):
        load_job_spec(spec)


def test_pseudo_label_flags_set_the_pseudo_label_task_only(tmp_path):
    """The README's two-task job (a caption task, then pseudo-label from its captions):
    --image-threshold and --box-threshold reach the pseudo-label task and leave the caption
    task (which refuses pseudo_label options) and its threshold alone."""
    spec = load_job_spec(_two_tasks(tmp_path, "{task: caption, model: {family: florence2, "
                                              "source: m}}"),
                         image_threshold=0.5, box_threshold=0.25)
    caption, pseudo = spec.tasks
    assert (pseudo.pseudo_label.image_threshold, pseudo.threshold) == (0.5, 0.25)
    assert (caption.threshold, caption.pseudo_label.image_threshold) == (0.1, 0.3)


@pytest.mark.parametrize("lines, flags, message", [
    ("    resources:\n", {"batch_size": 4}, None),  # an empty mapping line is null: made one
    ("    track: true\n", {"media": "video", "track_max_missed": 2},
     "tasks.0.track: True is not a mapping, so a flag cannot set max_missed in it"),
    ("    model: some/path\n", {"family": "owlv2"},
     "tasks.0.model: 'some/path' is not a mapping, so a flag cannot set family in it"),
])
def test_a_flag_setting_inside_a_field_that_is_no_mapping_is_named(tmp_path, lines, flags,
                                                                   message):
    spec = tmp_path / "job.yaml"
    model = "" if "model:" in lines else "    model: {family: owlv2, source: m}\n"
    spec.write_text(f"input: {{path: {tmp_path}}}\noutput: {{path: {tmp_path / 'out'}}}\n"
                    f"tasks:\n  - task: detect\n    labels: [cat]\n{model}{lines}")
    if message is None:
        assert load_job_spec(spec, **flags).tasks[0].resources.batch_size == 4
        return
    with pytest.raises(SpecError, match=re.escape(message)):
        load_job_spec(spec, **flags)
    (tmp_path / "o.yaml").write_text(f"input: {{path: {tmp_path}}}\noutput: ./out\n"
                                     f"tasks: [{{task: detect, labels: [cat], model: "
                                     f"{{family: owlv2, source: m}}}}]\n")
    with pytest.raises(SpecError, match=re.escape("output: './out' is not a mapping, so a flag "
                                                  "cannot set overwrite in it")):
        load_job_spec(tmp_path / "o.yaml", overwrite=True)


def test_word_list_files_that_are_not_utf8_are_refused_naming_the_field(tmp_path):
    """Read by every actor at setup: a file it cannot decode must stop the job at the spec,
    not as an actor's traceback after Ray started."""
    words = tmp_path / "latin1.txt"
    words.write_bytes("caf\xe9\ndog\n".encode("latin-1"))
    for flags, field in (({"generic_words_file": str(words)}, "generic_words_file"),
                         ({"vocabulary_file": str(words)}, "vocabulary_file")):
        spec = _two_tasks(tmp_path, "{task: caption, model: {family: florence2, source: m}}",
                          ", ".join(f"{k}: {v}" for k, v in flags.items()))
        with pytest.raises(SpecError, match=re.escape(
                f"tasks.1.pseudo_label.{field}: file {str(words)!r} is not UTF-8 text")):
            load_job_spec(spec)
