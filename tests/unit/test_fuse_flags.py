"""`labeler fuse` refuses bad settings naming the flag that gave them, on a job output of two
detect tasks written by the job's own sink (no Ray): exit 2, nothing written."""

import pytest
from test_export import _record, _write_job

from labeler.cli import main


@pytest.fixture
def job(tmp_path):
    return _write_job(tmp_path / "job", [
        _record("a.jpg", "/in/a.jpg", "detect", name, {"labels": ["x"]}, (8, 8), [])
        for name in ("a", "b")], ["a", "b"], 1)


@pytest.mark.parametrize("flags, message", [
    (["--tasks", "a"], "--tasks: fuse takes two or more distinct tasks of {job!r} (--tasks "
                       "a,b), or one task of each of several job outputs (got a)"),
    (["--tasks", "a,b", "--min-models", "3"],
     "invalid fuse settings:\n  --min-models: 3 is more than the 2 tasks fused"),
    (["--tasks", "a,b", "--weights", "2"],
     "invalid fuse settings:\n  --weights: 1 given for 2 tasks; give one per task"),
    (["--tasks", "a,b", "--weights", "1,0"],
     "invalid fuse settings:\n  --weights: Input should be greater than 0"),
    (["--tasks", "a,b", "--iou", "1.5"],
     "invalid fuse settings:\n  --iou: Input should be less than 1"),
    (["--tasks", "a,b", "--track-max-missed", "-1"],
     "invalid fuse settings:\n  --track-max-missed: Input should be greater than or equal to 0"),
    (["--tasks", "a,b", "--name", "a/b"],
     "invalid fuse settings:\n  --name: String should match pattern"),
])
def test_bad_settings_name_their_flag(job, tmp_path, capsys, flags, message):
    code = main(["fuse", job, *flags, "--out", str(tmp_path / "out")])
    printed, err = capsys.readouterr()
    assert (code, printed) == (2, "")
    assert err.startswith("error: " + message.format(job=job)), err
    assert not (tmp_path / "out").exists()
