"""Label Studio video object tracking: a tracked video task's tracks (a job run with
`track`) as pre-annotations to review, one Label Studio task per video.

    <out>/tasks.json          a JSON list of tasks, one per video, to import into the project
    <out>/label_config.xml    Video (frameRate), VideoRectangle and Labels with the categories

A task is `{"data": {"video": URL, "labeler_id": id, "fps": F}, "predictions": [prediction]}`; the
prediction holds one `videorectangle` region per track, as Label Studio's own video results
are (from_name the VideoRectangle, to_name the Video, `labels` in the value): a keyframe per
box of the track, `x, y, width, height` in percent of the frame as displayed, `frame`
counted from 1 at the video's frame rate (round(timestamp_s x fps) + 1: the frame Label
Studio shows at that time), `time` the frame's timestamp in seconds. Label Studio
interpolates a box between enabled keyframes, which fills the frames between two sampled
ones; the track's last keyframe is disabled, so its box stops there. A region's label is its
boxes' most frequent, its score their mean; the prediction's score is the mean of all
boxes'. Boxes in no track
(track_id null) are left out and counted.

Frame rate: each task's `fps` is its video's (Label Studio's default, 24, when the
container does not say), and the config's Video reads it (`frameRate="$fps"`), so videos of
different rates share a project. framesCount and duration: the video's, when the container
says them.

URL: as for images (labeler.export.label_studio): the row's `uri`, or a prefix followed by
the video's id. Memory holds one video's rows; tasks.json is written last.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from xml.sax.saxutils import quoteattr

from labeler.export.categories import Categories
from labeler.export.coco import json_line
from labeler.export.label_studio import CONFIG_FILE, TASKS_FILE, media_url
from labeler.export.rows import Box, Row, TrackCount, videos_of
from labeler.export.target import Target
from labeler.serve.formats import model_version

VIDEO_TAG, BOX_TAG, LABELS_TAG = "video", "box", "videoLabels"
FPS_KEY = "fps"  # the task data key the Video tag's frameRate reads
DEFAULT_FRAME_RATE = 24.0  # Label Studio's Video tag's own default
PERCENT_DECIMALS = 4  # 0.0001% of a 4K frame's width is 0.004 px


def video_label_config_xml(categories: Categories) -> str:
    """A labeling config: the video at its task's frame rate, a VideoRectangle, and Labels
    with every category, in order."""
    labels = "".join(f"\n    <Label value={quoteattr(name)}/>" for name in categories.names)
    return (f'<View>\n  <Video name="{VIDEO_TAG}" value="${VIDEO_TAG}" '
            f'frameRate="${FPS_KEY}"/>\n'
            f'  <VideoRectangle name="{BOX_TAG}" toName="{VIDEO_TAG}"/>\n'
            f'  <Labels name="{LABELS_TAG}" toName="{VIDEO_TAG}">{labels}\n'
            f'  </Labels>\n</View>\n')


def _keyframe(row: Row, box: Box, frame_rate: float, enabled: bool) -> dict:
    def pct(value: float, size: int) -> float:
        return round(100.0 * value / size, PERCENT_DECIMALS)

    return {"frame": round(row.timestamp_s * frame_rate) + 1, "time": row.timestamp_s,
            "enabled": enabled, "rotation": 0,
            "x": pct(box.x0, row.width), "y": pct(box.y0, row.height),
            "width": pct(box.x1 - box.x0, row.width), "height": pct(box.y1 - box.y0, row.height)}


def track_label(boxes: Iterable[Box]) -> str:
    """A track's label: its boxes' most frequent one, the first seen among equals (a track
    linked `across_labels` may hold several)."""
    counts = Counter(box.label for box in boxes)
    return max(counts, key=counts.__getitem__)


def video_prediction(frames: list[Row], version: str, frame_rate: float,
                     from_name: str = BOX_TAG, to_name: str = VIDEO_TAG) -> tuple[dict, int, int]:
    """The Label Studio prediction of one video's frame rows, keyframes numbered at
    `frame_rate` (the rate the project's Video tag plays it at), regions from the
    VideoRectangle `from_name` to the Video `to_name` -> (prediction, boxes in it, boxes left
    out for being in no track)."""
    tracks: dict[int, list[tuple[Row, Box]]] = {}
    untracked = 0
    for row in frames:
        for box in row.boxes:
            if box.track_id is None:
                untracked += 1
            else:
                tracks.setdefault(box.track_id, []).append((row, box))
    video = frames[0].video or {}
    fps, duration = video.get("fps"), video.get("duration_s")
    # framesCount at the rate the keyframes are numbered at (the project's Video frameRate,
    # which /predict honours), so that the last keyframe lies within the video's frames.
    counts = {"framesCount": round(duration * frame_rate)} if fps and duration else {}
    counts.update({"duration": duration} if duration else {})
    regions, scores = [], []
    for track_id in sorted(tracks):
        boxes = tracks[track_id]
        sequence = [_keyframe(row, box, frame_rate, enabled=k < len(boxes) - 1)
                    for k, (row, box) in enumerate(boxes)]
        track_scores = [box.score for _, box in boxes]
        regions.append({"id": f"track{track_id}", "from_name": from_name, "to_name": to_name,
                        "type": "videorectangle", "score": sum(track_scores) / len(boxes),
                        "value": {**counts, "sequence": sequence,
                                  "labels": [track_label(box for _, box in boxes)]}})
        scores += track_scores
    prediction = {"model_version": version, "result": regions}
    if scores:
        prediction["score"] = sum(scores) / len(scores)
    return prediction, len(scores), untracked


def probed_frame_rate(frames: list[Row]) -> float:
    """The video's frame rate as probed, else Label Studio's default."""
    return float((frames[0].video or {}).get("fps") or DEFAULT_FRAME_RATE)


def video_task(frames: list[Row], version: str,
               url_prefix: str | None) -> tuple[dict, int, int]:
    """The Label Studio task of one video's frame rows, at the video's frame rate -> (task,
    boxes in it, boxes left out for being in no track)."""
    frame_rate = probed_frame_rate(frames)
    prediction, boxes, untracked = video_prediction(frames, version, frame_rate)
    first = frames[0]
    url = first.uri if url_prefix is None else media_url(url_prefix, first.id)
    task = {"data": {VIDEO_TAG: url, "labeler_id": first.id, FPS_KEY: frame_rate},
            "predictions": [prediction]}
    return task, boxes, untracked


def write_label_studio_video(rows: Iterable[Row], categories: Categories, target: Target,
                             model: dict, url_prefix: str | None) -> TrackCount:
    """label_config.xml, then tasks.json (written last) from a tracked video task's frame
    rows, in job output order. model: the task's model, model_family and model_revision."""
    version = model_version(model.get("model_family") or "", model.get("model") or "",
                            model.get("model_revision"))
    target.write(CONFIG_FILE, video_label_config_xml(categories).encode())
    count = TrackCount()
    with target.final(TASKS_FILE) as out:
        out.write(b"[")
        for frames in videos_of(rows):
            task, boxes, untracked = video_task(frames, version, url_prefix)
            out.write((b"\n" if not count.sequences else b",\n") + json_line(task))
            count.sequences += 1
            count.frames += len(frames)
            count.boxes += boxes
            count.untracked_boxes += untracked
        out.write(b"\n]\n")
    return count
