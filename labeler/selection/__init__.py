"""The rows of a job most worth a human's review (`labeler select`, docs/select.md).

    scores.py  a row's priority and its reason: uncertainty (one task), disagreement (several)
    run.py     options, the rows streamed and scored, the best `limit` kept, the ids file
"""

from labeler.selection.run import SelectError, SelectOptions, SelectSummary, run_select

__all__ = ["SelectError", "SelectOptions", "SelectSummary", "run_select"]
