"""`labeler eval --mot`: MOTA and IDF1 of a tracked video task against MOTChallenge ground
truth. The metrics are checked on scenes counted by hand; the command on a job output
written by the job's own sink (tests/unit/test_export_tracks.py), against its own MOT
export and against hand-edited ground truth."""

import json

import numpy as np
import pytest
from test_export import _export
from test_export_tracks import _job

from labeler.evaluate.mot_metrics import FrameTracks, score_video


def _frame(truth, boxes):
    """truth / boxes: [(id, class, x0, y0, x1, y1)]."""
    def arrays(items):
        return (np.array([i[2:] for i in items], dtype=float).reshape(-1, 4),
                np.array([i[0] for i in items], dtype=np.int64),
                np.array([i[1] for i in items], dtype=np.int64))
    (tb, ti, tc), (bb, bi, bc) = arrays(truth), arrays(boxes)
    return FrameTracks(tb, ti, tc, bb, bi, bc)


@pytest.fixture(scope="module")
def tracked_job(tmp_path_factory):
    """test_export_tracks' job: cam/a.mp4 (a car and a person) and b.mp4 (a car)."""
    return _job(tmp_path_factory.mktemp("tracked") / "out")


def _obj(id_, x, cls=0, y=0, side=10):
    return (id_, cls, x, y, x + side, y + side)


def test_a_perfect_tracker_scores_one():
    frames = [_frame([_obj(7, f), _obj(8, 50 + f)], [_obj(1, f), _obj(2, 50 + f)])
              for f in range(5)]
    s = score_video(frames)
    assert (s.objects, s.boxes, s.matches, s.id_switches, s.idtp) == (10, 10, 10, 0, 10)
    assert s.mota == s.idf1 == s.motp == 1.0


def test_an_id_switch_costs_mota_once_and_idf1_the_frames_after_it():
    # One object over 5 frames, tracked as 1 for 3 frames and as 2 for the last 2.
    frames = [_frame([_obj(7, f)], [_obj(1 if f < 3 else 2, f)]) for f in range(5)]
    s = score_video(frames)
    assert (s.matches, s.id_switches) == (5, 1)
    assert s.mota == pytest.approx(1 - 1 / 5)
    assert s.idtp == 3 and s.idf1 == pytest.approx(2 * 3 / 10)


def test_misses_false_boxes_classes_and_the_iou_floor():
    frames = [
        _frame([_obj(7, 0)], [_obj(1, 0), _obj(2, 100)]),  # a match and a false box
        _frame([_obj(7, 0)], []),  # a miss
        _frame([_obj(7, 0)], [_obj(1, 4)]),  # IoU 6x10 / 14x10 = 0.43 < 0.5: miss + false
        _frame([_obj(7, 0, cls=1)], [_obj(1, 0, cls=2)]),  # another class: miss + false
    ]
    s = score_video(frames)
    assert (s.objects, s.boxes, s.matches) == (4, 4, 1)
    assert (s.false_positives, s.misses) == (3, 3)
    assert s.mota == pytest.approx(1 - 6 / 4)
    assert score_video(frames[2:3], iou=0.4).matches == 1


def test_a_continued_match_is_kept_over_a_better_overlap():
    # Tracker 1 follows the object; in frame 2 tracker 2 overlaps it better, yet the
    # match continues with 1 (MOTChallenge's rule), so there is no switch.
    frames = [_frame([_obj(7, 0)], [_obj(1, 0)]),
              _frame([_obj(7, 0)], [_obj(1, 2), _obj(2, 0)])]
    s = score_video(frames)
    assert (s.matches, s.id_switches, s.false_positives) == (2, 0, 1)
    assert s.motp == pytest.approx((1 + 80 / 120) / 2)


@pytest.mark.parametrize("between", [
    _frame([_obj(7, 0)], []),  # the object missed: no tracker box
    _frame([], [_obj(1, 0)]),  # no object: a false box
])
def test_a_frame_without_objects_or_boxes_does_not_end_the_match_to_continue(between):
    # TrackEval passes over such a frame: tracker 1 still continues object 7 in the frame
    # after, over tracker 2's better overlap (counted by TrackEval 1.3.0: IDSW 0, 2 matches).
    frames = [_frame([_obj(7, 0)], [_obj(1, 0)]), between,
              _frame([_obj(7, 0)], [_obj(1, 2), _obj(2, 0)])]
    s = score_video(frames)
    assert (s.matches, s.id_switches) == (2, 0)
    assert s.motp == pytest.approx((1 + 80 / 120) / 2)


def _write_truth(root, video, lines, labels=None):
    folder = root / video / "gt"
    folder.mkdir(parents=True)
    (folder / "gt.txt").write_text("".join(f"{line}\n" for line in lines))
    if labels is not None:
        (folder / "labels.txt").write_text("".join(f"{name}\n" for name in labels))


def _eval(capsys, *args):
    from labeler.cli import main

    code = main(["eval", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_a_tracked_job_against_its_own_mot_export_scores_one(tracked_job, tmp_path,
                                                             capsys):
    assert _export(capsys, tracked_job, "--format", "mot", "--out", tmp_path / "gt")[0] == 0
    code, out, _ = _eval(capsys, tracked_job, "--mot", tmp_path / "gt", "--json",
                         tmp_path / "f.json")
    assert code == 0
    figures = json.loads((tmp_path / "f.json").read_text())
    assert figures["all"]["mota"] == figures["all"]["idf1"] == 1.0
    assert [v["video"] for v in figures["videos"]] == ["b.mp4", "cam/a.mp4"]
    assert (figures["frames"], figures["untracked_boxes"]) == (5, 1)
    assert "boxes left out: 1 in no track, 0 of labels that are no ground-truth class" in out
    assert "  all              7       7   1.000  1.000     0      0      0  1.000" in out


def test_hand_labeled_truth_with_a_switch_a_miss_and_an_unlabeled_video(tracked_job,
                                                                        tmp_path, capsys):
    gt = tmp_path / "gt"
    # cam/a.mp4 is labeled at frames 1, 11, 21 (frame_index + 1). The truth: the car is
    # object 5, the person object 6 on frame 1 and object 9 on frame 11 (the tracker kept
    # one id: an identity error, no switch for the truth), one more person on frame 21
    # the tracker missed, a bus no box asks for, and a line not considered.
    _write_truth(gt, "cam/a.mp4", [
        "1,5,0,0,10,10,1,1,1", "1,6,30,20,10,20,1,2,1",
        "11,5,2,0,10,10,1,1,1", "11,9,31,20,10,20,1,2,1",
        "21,5,4,0,10,10,1,1,1", "21,6,40,20,10,20,1,2,1",
        "21,8,0,30,5,5,0,2,1",  # not considered
        "5,5,0,0,10,10,1,1,1",  # a frame the job did not label: not counted
    ], labels=["car", "person", "bus"])
    _write_truth(gt, "other.mp4", ["1,1,0,0,5,5,1,1,1"], labels=["car"])
    code, out, _ = _eval(capsys, tracked_job, "--mot", gt)
    assert code == 0, out
    assert "videos evaluated: 1; frames evaluated (the job's labeled frames): 3" in out
    assert "1 ground-truth videos the task did not label: other.mp4" in out
    # objects 6 (car 3 + person 3), boxes 5 tracked, matches 5, FN 1, FP 0, no switch;
    # IDF1: car 3 frames, person: track 2 pairs with object 6 (1 frame) or 9 (1): IDTP 4.
    assert "  cam/a.mp4        6       5   0.833  0.727     0      0      1  1.000" in out


def test_match_pairs_a_label_with_a_class_of_another_name(tracked_job, tmp_path, capsys):
    # The truth has pedestrians only: unpaired, the car (3) and person (2) boxes are left out.
    _write_truth(tmp_path / "gt", "cam/a.mp4", ["1,6,30,20,10,20,1,1,1",
                                                "11,6,31,20,10,20,1,1,1"],
                 labels=["pedestrian"])
    code, out, _ = _eval(capsys, tracked_job, "--mot", tmp_path / "gt")
    assert code == 0 and "5 of labels that are no ground-truth class" in out
    assert "  all              2       0   0.000  0.000" in out
    code, out, _ = _eval(capsys, tracked_job, "--mot", tmp_path / "gt", "--match",
                         "person=Pedestrian")
    assert code == 0 and "3 of labels that are no ground-truth class" in out
    assert "  all              2       2   1.000  1.000" in out


def test_bad_ground_truth_and_untracked_jobs_are_refused(tracked_job, tmp_path,
                                                         capsys):
    code, _, err = _eval(capsys, tracked_job, "--mot", tmp_path / "nothing")
    assert code == 2 and "holds no sequence: expected <video id>/gt/gt.txt" in err
    _write_truth(tmp_path / "bad", "cam/a.mp4", ["1,5,0,0,10,10", "2,x,0,0,1,1"])
    code, _, err = _eval(capsys, tracked_job, "--mot", tmp_path / "bad")
    assert code == 2 and "gt/gt.txt line 2: expected frame,id,x,y,w,h" in err
    _write_truth(tmp_path / "frame0", "cam/a.mp4", ["1,5,0,0,10,10", "0,5,0,0,10,10"])
    code, _, err = _eval(capsys, tracked_job, "--mot", tmp_path / "frame0")
    assert code == 2 and "gt/gt.txt line 2: frame counts from 1 and w, h are sizes" in err
    (tmp_path / "latin" / "cam/a.mp4" / "gt").mkdir(parents=True)
    (tmp_path / "latin" / "cam/a.mp4" / "gt" / "gt.txt").write_bytes(b"1,5,0,0,10,10\n\xff\xfe")
    code, _, err = _eval(capsys, tracked_job, "--mot", tmp_path / "latin")
    assert code == 2 and "gt/gt.txt is not UTF-8 text" in err
    _write_truth(tmp_path / "class", "cam/a.mp4", ["1,5,0,0,10,10,1,4,1"], labels=["car"])
    code, _, err = _eval(capsys, tracked_job, "--mot", tmp_path / "class")
    assert code == 2 and "class 4 is not a line of gt/labels.txt (1 classes)" in err
    _write_truth(tmp_path / "named", "elsewhere.mp4", ["1,5,0,0,10,10"])
    code, _, err = _eval(capsys, tracked_job, "--mot", tmp_path / "named")
    assert code == 2 and "no video of task 'detect' has ground truth" in err

    untracked = _job(tmp_path / "untracked", params={"labels": ["car", "person"]}, track=None)
    _write_truth(tmp_path / "good", "cam/a.mp4", ["1,5,0,0,10,10"])
    code, _, err = _eval(capsys, untracked, "--mot", tmp_path / "good")
    assert code == 2 and "was labeled without tracking" in err
    code, _, err = _eval(capsys, tracked_job, "--mot", tmp_path / "good", "--worst", "3")
    assert code == 2 and "--worst applies to --coco and --yolo, not to --mot" in err
