"""Fusing the boxes of several tasks of one job into one (`labeler fuse`, docs/fuse.md).

    wbf.py  weighted boxes fusion of one image's boxes from several models
    run.py  settings, the job's task folders checked against each other, the fused output
"""

from labeler.fusion.run import FuseOptions, FuseSettings, FuseSummary, run_fuse
from labeler.fusion.wbf import FusionCount, FusionRule, fuse_boxes

__all__ = ["FuseOptions", "FuseSettings", "FuseSummary", "FusionCount", "FusionRule",
           "fuse_boxes", "run_fuse"]
