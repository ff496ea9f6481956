"""Spec errors of video and pseudo-label jobs: refused before any work, naming the field."""

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
    ({"image_threshold": 0.5}, "pseudo_label options apply only to task 'pseudo-label'"),
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
