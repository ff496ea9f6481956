"""Whether a pseudo-labelled image is kept, and the sentence saying why not (pure functions).

An image is kept when its best box (the highest score among the boxes kept by the box
threshold) scores at least the image threshold. Every image keeps its row; one that is not
kept gets `kept: false` and a `filter_reason` of the form "<kind>: <detail>", the kind
being one of REASON_KINDS, which the report counts.
"""

from __future__ import annotations

import numpy as np

NO_QUERIES = "no queries"
NO_BOX = "no box"
BELOW_THRESHOLD = "below image threshold"
REASON_KINDS = (NO_QUERIES, NO_BOX, BELOW_THRESHOLD)
# Truncated queries named in a row's warning; the count says how many there were in all.
SHOWN_TRUNCATED = 3


def image_verdict(best: float | None, image_threshold: float,
                  box_threshold: float) -> tuple[bool, str | None]:
    """best: the image's best box score, None when no box passed the box threshold.
    -> (kept, filter_reason); kept when best >= image_threshold, compared in float32."""
    if best is None:
        return False, f"{NO_BOX}: no box scores above the box threshold {box_threshold:g}"
    # In float32, as scores are computed and stored: a box stored as 0.29 passes 0.29.
    if np.float32(best) < np.float32(image_threshold):
        shown = f"{best:.3f}"
        if float(shown) >= image_threshold:  # rounded, it would read "0.300 < 0.3"
            shown = str(np.float32(best))  # the shortest digits telling it apart
        return False, f"{BELOW_THRESHOLD}: best box {shown} < {image_threshold:g}"
    return True, None


def no_queries_reason(caption: str | None) -> str:
    """The filter_reason of a row with no query at all: its caption gave none, and there is
    no vocabulary (without captions, a vocabulary is required)."""
    if caption is None or not caption.strip():
        return f"{NO_QUERIES}: the caption is empty and there is no vocabulary"
    return (f"{NO_QUERIES}: the caption holds no word but stop words, generic words and "
            "numbers, and there is no vocabulary")


def reason_kind(reason: str) -> str:
    """'below image threshold: best box 0.213 < 0.3' -> 'below image threshold'."""
    return reason.partition(":")[0]


def truncation_warning(truncated: list[str], total: int, limit: int) -> str:
    """A row's one warning for its queries cut to the text model's `limit` tokens."""
    shown = ", ".join(repr(q) for q in truncated[:SHOWN_TRUNCATED])
    more = ", ..." if len(truncated) > SHOWN_TRUNCATED else ""
    return (f"{len(truncated)} of {total} queries are longer than the text model's {limit} "
            f"tokens (with the template) and were truncated: {shown}{more}")
