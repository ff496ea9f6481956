"""The CPU stage of the pipeline: read and decode, one error row per input that fails."""

from __future__ import annotations

import time

import numpy as np

from labeler.media.image import MediaError, decode_image
from labeler.storage import read_bytes

# Shape of the placeholder image of an error row: Ray Data's variable-shaped tensor column
# needs every row to have the same number of dimensions.
EMPTY_IMAGE = np.zeros((0, 0, 3), dtype=np.uint8)


def decode_batch(batch: dict[str, np.ndarray], max_pixels: int,
                 decode_min_side: int | None) -> dict[str, np.ndarray]:
    """{id, uri, shard} -> the same plus image (h, w, 3) uint8, width, height (original,
    oriented; 0 on error), error ("" or the reason) and decode_ms.

    error is "" rather than None for good rows: a column of only None becomes Arrow's null
    type between stages and comes back as floats.
    """
    n = len(batch["uri"])
    images, widths, heights, errors, times = [], np.zeros(n, np.int32), np.zeros(n, np.int32), [], []
    for i, uri in enumerate(batch["uri"]):
        start = time.perf_counter()
        try:
            decoded = decode_image(read_bytes(str(uri)), max_pixels, decode_min_side)
            images.append(decoded.pixels)
            widths[i], heights[i] = decoded.width, decoded.height
            errors.append("")
        except MediaError as err:
            images.append(EMPTY_IMAGE)
            errors.append(str(err))
        except OSError as err:  # missing or unreadable file: the reason, without a traceback
            images.append(EMPTY_IMAGE)
            errors.append(f"cannot read input: {err.strerror or err}")
        times.append((time.perf_counter() - start) * 1000.0)
    image_column = np.empty(n, dtype=object)
    image_column[:] = images
    return {
        "id": batch["id"], "uri": batch["uri"], "shard": batch["shard"],
        "image": image_column, "width": widths, "height": heights,
        "error": np.array(errors, dtype=object).astype(str), "decode_ms": np.array(times, np.float32),
    }
