"""`labeler track`: a video job's output linked into tracks again with other settings,
without labeling again. The output is written by the job's own sink (test_export_tracks'
job: cam/a.mp4 and b.mp4, labeled without tracking)."""

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
from test_export import _record
from test_export_tracks import VIDEO_A, _frames, _job

from labeler.actors.predictor import OUTPUT_SCHEMA
from labeler.cli import main
from labeler.config import TrackingSpec
from labeler.jobs.identity import fingerprint
from labeler.sinks.parquet import ShardedParquetSink
from labeler.tracking import add_track_ids

PARAMS = {"labels": ["car", "person"], "threshold": 0.1}
IDENTITY = {"version": 2, "input": {"media": "video", "files_per_shard": 4},
            "tasks": [{"task": "detect", "model": {"family": "owlv2", "source": "tiny"},
                       "labels": ["car", "person"]}],
            "inputs": {"count": 2, "sha256": "x"}}


def _track(capsys, *args):
    code = main(["track", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def untracked(tmp_path):
    root = _job(tmp_path / "job", params=PARAMS, track=None, identity=IDENTITY)
    (tmp_path / "job" / "notes").mkdir()
    (tmp_path / "job" / "notes" / "readme.txt").write_text("a person's notes")
    return root


def test_an_untracked_job_gets_tracks_without_labeling_again(untracked, tmp_path, capsys):
    out = tmp_path / "tracked"
    finished = json.loads((tmp_path / "job" / "_SUCCESS").read_text())
    line = "detect: detect with owlv2 tiny, batch 8, 1 actor(s) x 1 CPU 0 GPU"  # as run writes
    (tmp_path / "job" / "_SUCCESS").write_text(json.dumps({**finished, "tasks": [line]}))
    code, printed, _ = _track(capsys, untracked, "--out", out, "--new-track-score", "0.5",
                              "--max-missed", "1")
    assert code == 0, printed
    spec = TrackingSpec(new_track_score=0.5, max_missed=1)
    assert "linked 2 files: 3 tracks" in printed
    for part in ("part-00000", "part-00001"):
        before = pq.read_table(tmp_path / "job" / "detect" / f"{part}.parquet")
        after = pq.read_table(out / "detect" / f"{part}.parquet")
        expected = add_track_ids(before, spec)
        assert after.column("detections") == expected.column("detections")
        assert after.drop_columns(["detections", "parameters"]) == \
            expected.drop_columns(["detections", "parameters"])
        # parameters as a job with this `track` writes them
        assert {json.loads(p)["track"] == spec.model_dump() and
                json.loads(p)["labels"] == ["car", "person"]
                for p in after.column("parameters").to_pylist()} == {True}
    rows = pads.dataset(out / "detect", format="parquet").to_table().to_pylist()
    assert [[d["track_id"] for d in r["detections"] or []] for r in rows
            if r["id"] == "cam/a.mp4"] == [[1, 2], [2, 1, None], [1], []]
    # The identity is a tracked job's, so `labeler run` with these settings resumes it.
    manifest = json.loads((out / "_job.json").read_text())
    assert manifest["identity"]["tasks"][0]["track"] == {"new_track_score": 0.5,
                                                         "max_missed": 1}
    assert manifest["fingerprint"] == fingerprint(manifest["identity"])
    success = json.loads((out / "_SUCCESS").read_text())
    assert success["tracks"] == {"detect": 3} and Path(success["output"]) == out.resolve()
    tracked = json.dumps(spec.model_dump(exclude_defaults=True))
    assert success["tasks"] == [f"{line}; track {tracked}"]
    assert not (out / "notes").exists()  # no part of the job: not copied

    # Tracked again from the tracked copy: its stored settings stay, those given change.
    code, printed, _ = _track(capsys, out, "--out", tmp_path / "again", "--max-missed", "5")
    assert code == 0
    again = json.loads((tmp_path / "again" / "_job.json").read_text())
    assert again["identity"]["tasks"][0]["track"] == {"new_track_score": 0.5,
                                                      "max_missed": 5}
    # The summary names the settings of this copy's tracks, not those it was copied from.
    assert json.loads((tmp_path / "again" / "_SUCCESS").read_text())["tasks"] == [
        f'{line}; track {{"max_missed": 5, "new_track_score": 0.5}}']


def test_bad_settings_and_outputs_are_refused_before_anything_is_written(untracked, tmp_path,
                                                                         capsys):
    out = tmp_path / "out"
    code, _, err = _track(capsys, untracked, "--out", out, "--iou", "0")
    assert code == 2 and "invalid track settings:\n  --iou: Input should be greater than 0" in err
    code, _, err = _track(capsys, untracked, "--out", out, "--max-missed", "-1")
    assert code == 2 and ("invalid track settings:\n  --max-missed: Input should be greater "
                          "than or equal to 0") in err
    code, _, err = _track(capsys, untracked, "--out", out, "--task", "nothing")
    assert code == 2 and "nothing" in err
    assert not out.exists()
    code, _, err = _track(capsys, untracked, "--out", untracked)
    assert code == 2 and f"error: --out {untracked!r} is the job output" in err
    images = ShardedParquetSink(tmp_path / "images", {0: 1}, ["detect"], "fingerprint",
                                identity=IDENTITY)
    images.add(pa.Table.from_pylist([_record("a.jpg", "/a.jpg", "detect", "detect", PARAMS,
                                             (8, 8), [])], schema=OUTPUT_SCHEMA))
    images.finish({})
    code, _, err = _track(capsys, tmp_path / "images", "--out", out)
    assert code == 2 and "task 'detect' labels no video frames" in err
    older = _job(tmp_path / "older", params=PARAMS, track=None)  # _job.json without identity
    code, _, err = _track(capsys, older, "--out", out)
    assert code == 2 and "written by an older labeler" in err
    (tmp_path / "older" / "_job.json").write_bytes(b"{not json")
    code, _, err = _track(capsys, older, "--out", out)
    assert code == 2 and "holds no readable _job.json" in err
    assert not out.exists()


def test_the_copy_holds_the_jobs_files_only_and_never_goes_inside_the_job(untracked, tmp_path,
                                                                         capsys):
    """A folder inside the job output would travel into every later copy (and read as a task
    folder); a preview or export a person put there is no part of the job."""
    job = tmp_path / "job"
    (job / "detect" / "_report.json").write_text("{}")  # a task's report: the job's
    (job / "detect" / ".part-00002.parquet.tmp").write_bytes(b"a shard being written")
    (job / "detect" / "preview").mkdir()
    (job / "detect" / "preview" / "index.html").write_text("<html>")
    for out in (job / "tracked", job / "detect" / "tracked", job / "notes"):
        code, printed, err = _track(capsys, untracked, "--out", out, "--overwrite")
        assert (code, printed) == (2, "")
        assert err == (f"error: --out {str(out)!r} is inside the job output {untracked!r}: "
                       f"choose a folder outside it\n")
    assert not (job / "tracked").exists() and not (job / "detect" / "tracked").exists()
    assert (job / "notes" / "readme.txt").exists()

    out = tmp_path / "copy"
    code, _, err = _track(capsys, untracked, "--out", out)
    assert code == 0, err
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "_SUCCESS", "_job.json", "detect/_report.json", "detect/part-00000.parquet",
        "detect/part-00001.parquet"]


def test_a_folder_that_is_no_task_of_the_job_is_refused(untracked, tmp_path, capsys):
    """A task folder its _job.json does not name (a fused task put in the output by an older
    labeler fuse) has no stored settings to track it with."""
    shutil.copytree(tmp_path / "job" / "detect", tmp_path / "job" / "fused")
    code, printed, err = _track(capsys, untracked, "--task", "fused", "--out", tmp_path / "out")
    assert (code, printed) == (2, "")
    assert err == (f"error: 'fused' is no task of the job that wrote {untracked!r} (its "
                   f"_job.json names detect): choose one of them with --task\n")
    assert not (tmp_path / "out").exists()


def test_a_video_job_whose_rows_are_all_errors_is_not_called_an_image_job(tmp_path, capsys):
    sink = ShardedParquetSink(tmp_path / "job", {0: 1}, ["detect"], "fingerprint",
                              identity=IDENTITY)  # input.media: video
    sink.add(pa.Table.from_pylist(_frames("a.mp4", VIDEO_A, (64, 48), [
        (0, "cannot read input: no such file")], 0, PARAMS), schema=OUTPUT_SCHEMA))
    sink.finish({})
    code, printed, err = _track(capsys, tmp_path / "job", "--out", tmp_path / "out")
    assert (code, printed) == (2, "")
    assert err == ("error: task 'detect' has no frame without an error (its rows are error "
                   "rows): there are no boxes to link into tracks\n")
    assert not (tmp_path / "out").exists()
