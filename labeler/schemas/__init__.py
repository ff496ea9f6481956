"""The annotation record: one definition for Parquet rows and HTTP responses."""

from labeler.schemas.record import (
    RECORD_SCHEMA,
    SCHEMA_VERSION,
    Detection,
    OcrRegion,
    Record,
    VideoMeta,
    Timings,
    arrow_schema,
    as_stored,
)

__all__ = ["RECORD_SCHEMA", "SCHEMA_VERSION", "Detection", "OcrRegion", "Record", "Timings", "VideoMeta", "arrow_schema",
           "as_stored"]
