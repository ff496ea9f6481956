"""Fusing the boxes of several tasks of one job into one (`labeler fuse`, docs/fuse.md).

    wbf.py      weighted boxes fusion of one image's boxes from several models
    records.py  one input's records of several tasks -> the fused record (batch and online)
    run.py      settings, the job's task folders checked against each other, the fused output
"""

from labeler.fusion.records import FUSED_KINDS, FusionSpec, RecordFuser, fused_kind
from labeler.fusion.run import FuseOptions, FuseSettings, FuseSummary, run_fuse
from labeler.fusion.wbf import FusionCount, FusionRule, fuse_boxes

__all__ = ["FUSED_KINDS", "FuseOptions", "FuseSettings", "FuseSummary", "FusionCount",
           "FusionRule", "FusionSpec", "RecordFuser", "fuse_boxes", "fused_kind", "run_fuse"]
