"""`labeler fuse` on the output of a real job with two tiny OWLv2 detect tasks: the fused rows
are weighted boxes fusion of the tasks' rows (labeler.fusion.wbf, itself checked against the
reference implementation), one per input, error rows naming the tasks; COCO export reads the
fused output; bad requests are refused before anything is written; S3 both ways."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from labeler.cli import main
from labeler.config import load_job_spec
from labeler.fusion import FusionRule, fuse_boxes
from labeler.jobs.runner import run_job


def _rows(folder) -> dict[str, dict]:
    return {r["id"]: r for r in pads.dataset(folder, format="parquet").to_table().to_pylist()}


def _fuse(capsys, *args) -> tuple[int, str, str]:
    code = main(["fuse", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _select(capsys, *args) -> tuple[int, str, str]:
    code = main(["select", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _expected(rows: dict, rule: FusionRule, rename: dict | None = None) -> list[dict]:
    rename = rename or {}
    per_task = [[{**d, "label": rename.get(d["label"], d["label"])} for d in r["detections"]]
                for r in rows]
    return fuse_boxes(per_task, rows[0]["width"], rows[0]["height"], rule)


def _same_boxes(got: list[dict], expected: list[dict]) -> None:
    assert [d["label"] for d in got] == [d["label"] for d in expected]
    for d, e in zip(got, expected):  # written as float32
        assert [d[k] for k in ("score", "x0", "y0", "x1", "y1")] == pytest.approx(
            [e[k] for k in ("score", "x0", "y0", "x1", "y1")], rel=1e-6, abs=1e-4)
        assert d["track_id"] is None and d["polygon"] is None


def test_fuse_writes_one_row_per_input_with_the_tasks_boxes_fused(two_task_job, tmp_path, capsys):
    job, tasks = two_task_job
    a, b = tasks["owl_a"], tasks["owl_b"]
    good = [i for i, r in a.items() if r["error"] is None]
    assert len(a) == 9 and len(good) == 6
    assert sum(len(a[i]["detections"]) for i in good) and sum(len(b[i]["detections"]) for i in good)

    code, out, _ = _fuse(capsys, job, "--tasks", "owl_a,owl_b", "--weights", "2,1",
                         "--out", tmp_path / "fused")
    assert code == 0
    assert sorted(p.name for p in (tmp_path / "fused" / "fused").iterdir()) == [
        "part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    fused = _rows(tmp_path / "fused" / "fused")
    assert sorted(fused) == sorted(a)
    rule = FusionRule(weights=(2.0, 1.0))
    boxes_out = 0
    for name, row in fused.items():
        assert (row["task"], row["task_name"], row["model"], row["model_family"]) == (
            "detect", "fused", "owl_a+owl_b", "fuse")
        assert (row["uri"], row["width"], row["height"]) == (
            a[name]["uri"], a[name]["width"], a[name]["height"])
        parameters = json.loads(row["parameters"])
        assert parameters["fuse"] == {"method": "wbf", "tasks": ["owl_a", "owl_b"],
                                      "weights": [2.0, 1.0], "iou": 0.55, "min_score": 0.0,
                                      "conf_type": "avg", "min_models": 1, "rename": {}}
        assert parameters["sources"] == {t: json.loads(tasks[t][name]["parameters"])
                                         for t in ("owl_a", "owl_b")}
        assert parameters["labels"] == ["cat", "dog"]
        if name in good:
            assert row["error"] is None
            _same_boxes(row["detections"], _expected([a[name], b[name]], rule))
            boxes_out += len(row["detections"])
        else:
            assert row["error"] == f"owl_a: {a[name]['error']}; owl_b: {b[name]['error']}"
            assert row["detections"] is None
    boxes_in = [sum(len(t[i]["detections"]) for i in good) for t in (a, b)]
    assert out.splitlines() == [
        "fused owl_a, owl_b into fused: 3 files, 9 rows (3 error rows)",
        f"boxes in: owl_a {boxes_in[0]}, owl_b {boxes_in[1]}; out: {boxes_out}",
        "dropped: 0 under min score, 0 of no area, 0 found by fewer than 1 tasks",
        f"output: {tmp_path / 'fused'}"]
    report = json.loads((tmp_path / "fused" / "_SUCCESS").read_text())
    assert report["boxes_in"] == {"owl_a": boxes_in[0], "owl_b": boxes_in[1]}
    assert (report["rows"], report["error_rows"], report["boxes_out"]) == (9, 3, boxes_out)

    # The fused output is a job output like any other: export takes its boxes.
    assert main(["export", str(tmp_path / "fused"), "--format", "coco",
                 "--out", str(tmp_path / "coco")]) == 0
    coco = json.loads((tmp_path / "coco" / "annotations.json").read_text())
    assert (len(coco["images"]), len(coco["annotations"])) == (6, boxes_out)
    assert [c["name"] for c in coco["categories"]] == ["cat", "dog"]


def test_consensus_renaming_and_the_other_settings_reach_the_fusion(two_task_job, tmp_path,
                                                                     capsys):
    job, tasks = two_task_job
    a, b = tasks["owl_a"], tasks["owl_b"]
    code, out, _ = _fuse(capsys, job, "--tasks", "owl_b,owl_a", "--min-models", "2",
                         "--rename", "dog=canine", "--rename", "dgo=canine",
                         "--conf-type", "max", "--iou", "0.7",
                         "--min-score", "0.35", "--name", "agreed", "--out", tmp_path / "f")
    assert code == 0
    fused = _rows(tmp_path / "f" / "agreed")
    rule = FusionRule(weights=(1.0, 1.0), iou=0.7, min_score=0.35, conf_type="max",
                      min_models=2)
    kept = dropped = 0
    for name, row in fused.items():
        if row["error"] is None:
            expected = _expected([b[name], a[name]], rule, {"dog": "canine"})
            _same_boxes(row["detections"], expected)
            kept += len(expected)
            dropped += len(_expected([b[name], a[name]], FusionRule(
                weights=(1.0, 1.0), iou=0.7, min_score=0.35, conf_type="max"))) - len(expected)
    assert kept and dropped  # some boxes both tasks found, some only one did
    assert {d["label"] for r in fused.values() for d in r["detections"] or []} <= {"cat", "canine"}
    assert json.loads(next(iter(fused.values()))["parameters"])["labels"] == ["cat", "canine"]
    assert "found by fewer than 2 tasks" in out and f"{dropped} found by fewer" in out
    # A rename no box's label matched is said (a typo would otherwise go unseen).
    assert ("warning: --rename dgo: no box of the tasks had that label (is it spelled as the "
            "tasks' labels are?)") in out
    assert "--rename dog" not in out


def _copy(job: str, tmp_path) -> str:
    copy = tmp_path / "job"
    shutil.copytree(job, copy)
    return str(copy)


def _rewrite(path, transform) -> None:
    pq.write_table(transform(pq.read_table(path)), path)


@pytest.mark.parametrize("case, args, message", [
    ("unknown task", ["--tasks", "owl_a,nope"], "no task folder 'nope'"),
    ("no task", [], "--tasks: fuse takes two or more distinct tasks of"),
    ("one task", ["--tasks", "owl_a"], "(--tasks a,b), or one task of each of several job "
                                       "outputs (got owl_a)"),
    ("a task twice", ["--tasks", "owl_a,owl_a"], "(got owl_a, owl_a)"),
    ("weights", ["--tasks", "owl_a,owl_b", "--weights", "2"],
     "\n  --weights: 1 given for 2 tasks; give one per task"),
    ("zero weight", ["--tasks", "owl_a,owl_b", "--weights", "1,0"],
     "\n  --weights: Input should be greater than 0"),
    ("min models", ["--tasks", "owl_a,owl_b", "--min-models", "3"],
     "\n  --min-models: 3 is more than the 2 tasks fused"),
    ("iou", ["--tasks", "owl_a,owl_b", "--iou", "1.5"], "\n  --iou: Input should be less than 1"),
    ("name", ["--tasks", "owl_a,owl_b", "--name", "a/b"],
     "\n  --name: String should match pattern"),
])
def test_bad_settings_are_refused_naming_the_flag_before_anything_is_written(
        two_task_job, tmp_path, capsys, case, args, message):
    job, _ = two_task_job
    code, _, err = _fuse(capsys, job, *args, "--out", tmp_path / "out")
    assert code == 2 and message in err, err
    assert not (tmp_path / "out").exists()


def test_one_task_given_twice_through_two_outputs_is_refused(two_task_job, tmp_path, capsys,
                                                              monkeypatch):
    job, _ = two_task_job
    monkeypatch.chdir(Path(job).parent)
    # The same output, once by its path and once relative: its task would agree with itself.
    code, _, err = _fuse(capsys, job, Path(job).name, "--tasks", "owl_a,owl_a",
                         "--out", tmp_path / "out")
    assert code == 2 and (f"task 'owl_a' of {Path(job).name!r} is given twice (job outputs 1 "
                          f"and 2); fuse distinct tasks") in err, err
    assert not (tmp_path / "out").exists()


def test_outputs_fuse_cannot_pair_are_refused_naming_the_task_part_and_row(two_task_job,
                                                                         tmp_path, capsys):
    job = _copy(two_task_job[0], tmp_path)
    out = tmp_path / "out"
    flags = ["--tasks", "owl_a,owl_b", "--out", out]

    (out / "x").mkdir(parents=True)
    code, _, err = _fuse(capsys, job, *flags)
    assert code == 2 and f"--out {str(out)!r} is not empty; pass --overwrite" in err
    shutil.rmtree(out)

    part = f"{job}/owl_b/part-00001.parquet"
    first = pq.read_table(part).column("id")[0].as_py()
    _rewrite(part, lambda t: t.filter(pc.not_equal(t.column("id"), first)))
    code, _, err = _fuse(capsys, job, *flags)
    assert code == 2 and (f"part-00001.parquet of task 'owl_a' holds input {first!r}, which "
                          f"the other tasks do not (1 such rows)") in err, err

    good = pq.read_table(part)
    Path(part).write_bytes(b"PAR1 not a parquet file")  # corrupt, beyond the first part
    code, _, err = _fuse(capsys, job, *flags)
    assert code == 2 and "holds a file that is not readable Parquet" in err, err
    code, _, err = _select(capsys, job, "--tasks", "owl_a,owl_b")
    assert code == 2 and "holds a file that is not readable Parquet" in err, err
    pq.write_table(good, part)

    shutil.move(part, tmp_path / "moved.parquet")
    code, _, err = _fuse(capsys, job, *flags)
    assert code == 2 and "task 'owl_b' has no part-00001.parquet" in err, err

    for path in (f"{job}/owl_b/part-00000.parquet", f"{job}/owl_b/part-00002.parquet"):
        _rewrite(path, lambda t: t.set_column(t.schema.get_field_index("task"), "task",
                                              pa.array(["caption"] * t.num_rows)))
    code, _, err = _fuse(capsys, job, *flags)
    assert code == 2 and "task 'owl_b' is a caption task; fuse takes tasks" in err, err
    assert not out.exists()

    with pytest.raises(SystemExit):
        main(["fuse", job, "--tasks", "owl_a,owl_b", "--rename", "dog", "--out", str(out)])
    assert "'dog': a task's label, '=', the label to fuse it as" in capsys.readouterr().err


def test_fuse_reads_and_writes_s3_in_worker_processes_as_in_one(two_task_job, s3_bucket,
                                                                s3_env, tmp_path, capsys):
    job, _ = two_task_job
    client = s3_env.client()
    for path in sorted(Path(job).rglob("*")):
        if path.is_file():
            client.put_object(Bucket=s3_bucket, Key=f"job/{path.relative_to(job).as_posix()}",
                              Body=path.read_bytes())
    code, out, _ = _fuse(capsys, f"s3://{s3_bucket}/job", "--tasks", "owl_a,owl_b",
                         "--out", f"s3://{s3_bucket}/fused")
    assert code == 0 and f"output: s3://{s3_bucket}/fused" in out
    # In this process (--workers 1) as in two worker processes (the default here).
    assert _fuse(capsys, job, "--tasks", "owl_a,owl_b", "--workers", "1",
                 "--out", tmp_path / "local")[0] == 0
    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket=s3_bucket,
                                                           Prefix="fused/")["Contents"])
    assert keys == ["fused/_SUCCESS", "fused/fused/part-00000.parquet",
                    "fused/fused/part-00001.parquet", "fused/fused/part-00002.parquet"]
    for key in keys[1:]:
        body = client.get_object(Bucket=s3_bucket, Key=key)["Body"].read()
        remote = pq.read_table(pa.BufferReader(body)).to_pylist()
        assert remote == pq.read_table(tmp_path / "local" / key.removeprefix("fused/")).to_pylist()



def test_a_video_jobs_tasks_fuse_frame_by_frame_and_link_into_tracks(ray_local, two_owlv2_tasks,
                                                                      tmp_path, capsys):
    """Frame rows pair by (video, frame); --track links the fused boxes as a tracked job
    links its own (add_track_ids on the fused rows), and the tracks export as MOT."""
    from labeler.config import TrackingSpec
    from labeler.testing.videos import encode_video
    from labeler.tracking import add_track_ids

    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("a.mp4", "b.mp4"):
        encode_video(videos / name, "libx264", count=12)
    spec = tmp_path / "job.yaml"
    spec.write_text(f"input: {{path: {videos}, media: video, sampling: {{every_n_frames: 2}}}}\n"
                    f"output: {{path: {tmp_path / 'out'}}}\n{two_owlv2_tasks(batch=6)}")
    run_job(load_job_spec(spec), progress=False)

    code, plain, _ = _fuse(capsys, tmp_path / "out", "--tasks", "owl_a,owl_b",
                           "--out", tmp_path / "plain")
    assert code == 0 and "tracks:" not in plain
    code, out, _ = _fuse(capsys, tmp_path / "out", "--tasks", "owl_a,owl_b", "--track",
                         "--track-max-missed", "1", "--out", tmp_path / "tracked")
    assert code == 0
    track = TrackingSpec(max_missed=1)
    untracked = pq.read_table(tmp_path / "plain" / "fused" / "part-00000.parquet")
    tracked = pq.read_table(tmp_path / "tracked" / "fused" / "part-00000.parquet")
    rows = tracked.to_pylist()
    assert [(r["id"], r["frame_index"]) for r in rows] == [
        (video, frame) for video in ("a.mp4", "b.mp4") for frame in range(0, 12, 2)]
    assert tracked.column("detections").to_pylist() == add_track_ids(
        untracked, track).column("detections").to_pylist()
    tracks = len({(r["id"], d["track_id"]) for r in rows for d in r["detections"]
                  if d["track_id"] is not None})
    assert tracks and f"tracks: {tracks} (" in out
    assert all(json.loads(r["parameters"])["track"] == track.model_dump() for r in rows)
    assert json.loads((tmp_path / "tracked" / "_SUCCESS").read_text())["tracks"] == tracks

    assert main(["export", str(tmp_path / "tracked"), "--format", "mot",
                 "--out", str(tmp_path / "mot")]) == 0
    lines = (tmp_path / "mot" / "a.mp4" / "gt" / "gt.txt").read_text().splitlines()
    assert len(lines) == sum(1 for r in rows if r["id"] == "a.mp4" for d in r["detections"]
                             if d["track_id"] is not None)


def test_track_is_refused_for_tasks_that_label_no_video_frames(two_task_job, tmp_path,
                                                               capsys):
    code, _, err = _fuse(capsys, two_task_job[0], "--tasks", "owl_a,owl_b", "--track",
                         "--out", tmp_path / "out")
    assert code == 2 and "--track: the tasks label no video frames" in err
    assert not (tmp_path / "out").exists()


def test_tasks_of_separate_jobs_over_the_same_input_fuse_as_one_jobs_do(
        two_task_job, two_owlv2_tasks, tmp_path, capsys):
    """A job that labeled the same input with the same files_per_shard writes the same part
    files and rows: its task fuses with another job's as two tasks of one job do. Without
    --tasks each output gives its only box task; two of one name are `name#2`."""
    from labeler.config import load_job_spec
    from labeler.jobs.images import run_image_job

    job, _ = two_task_job
    images = Path(job).parent / "images"
    only_b = two_owlv2_tasks(batch=4).split("  - name: owl_b")[1]
    spec = tmp_path / "job_b.yaml"
    spec.write_text(f"input: {{path: {images}, files_per_shard: 4}}\n"
                    f"output: {{path: {tmp_path / 'b'}}}\ntasks:\n  - name: owl_b{only_b}")
    run_image_job(load_job_spec(spec), progress=False)

    assert _fuse(capsys, job, "--tasks", "owl_a,owl_b", "--out", tmp_path / "one")[0] == 0
    code, out, _ = _fuse(capsys, job, tmp_path / "b", "--tasks", "owl_a,owl_b",
                         "--out", tmp_path / "two")
    assert code == 0 and out.startswith("fused owl_a, owl_b into fused: 3 files, 9 rows")
    one, two = _rows(tmp_path / "one" / "fused"), _rows(tmp_path / "two" / "fused")
    assert sorted(one) == sorted(two)
    for name, row in one.items():
        assert two[name]["detections"] == row["detections"]
        assert two[name]["error"] == row["error"]
    assert (tmp_path / "two" / "_SUCCESS").exists()

    # The same job run twice (here: its output copied) fuses as two outputs of one name.
    shutil.copytree(tmp_path / "b", tmp_path / "b_again")
    code, out, _ = _fuse(capsys, tmp_path / "b", tmp_path / "b_again", "--out",
                         tmp_path / "same")
    assert code == 0 and out.startswith("fused owl_b, owl_b#2 into fused")
    fused = _rows(tmp_path / "same" / "fused")
    b = _rows(tmp_path / "b" / "owl_b")
    good = next(i for i, r in b.items() if r["error"] is None and r["detections"])
    assert json.loads(fused[good]["parameters"])["fuse"]["tasks"] == ["owl_b", "owl_b#2"]
    # A task fused with its copy: the same boxes (clusters of two equal boxes), same scores.
    _same_boxes(fused[good]["detections"], _expected([b[good], b[good]], FusionRule((1.0, 1.0))))

    code, _, err = _fuse(capsys, job, tmp_path / "b", "--tasks", "owl_a",
                         "--out", tmp_path / "bad")
    assert code == 2 and "--tasks: 1 given for 2 job outputs; give one per output" in err
    code, _, err = _fuse(capsys, job, tmp_path / "b", "--out", tmp_path / "bad")
    assert code == 2 and (f"{job!r} holds 2 tasks with boxes (owl_a, owl_b): name one task "
                          f"of each job output with --tasks") in err
    assert not (tmp_path / "bad").exists()
