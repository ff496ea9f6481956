"""The figures of a job's output, to choose per-label thresholds and spot problems before an
export (`labeler stats`, docs/stats.md).

    compute.py  one task's figures, batch by batch, in bounded memory: rows, error reasons,
                boxes per label and score, text lengths
    run.py      options, the task folders, the table the command prints, the JSON file
"""

from labeler.stats.run import StatsError, StatsOptions, StatsSummary, run_stats

__all__ = ["StatsError", "StatsOptions", "StatsSummary", "run_stats"]
