"""Multi-object tracking over a video's labeled frames: `link_tracks` (boxes in, track ids
out) and `add_track_ids` (the same over the rows of a job's output shard)."""

from labeler.tracking.rows import add_track_ids, count_tracks
from labeler.tracking.tracker import NO_TRACK, link_tracks

__all__ = ["NO_TRACK", "add_track_ids", "count_tracks", "link_tracks"]
