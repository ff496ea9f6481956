"""Export a job's Parquet output as a detector training set, COCO detection JSON or a YOLO
(Ultralytics) dataset, or as Label Studio pre-annotations (`labeler export`, docs/export.md).

    rows.py        the job's task folders; the rows to export, batch by batch, and the tally
                   of what is left out (error rows, not-kept pseudo-labels, low scores)
    categories.py  deterministic category ids
    images.py      image file names and bytes (EXIF orientation), parallel copies
    target.py      the output folder or s3:// prefix
    coco.py        annotations.json, streamed
    yolo.py        images/, labels/, data.yaml
    label_studio.py  tasks.json with predictions, label_config.xml
    splits.py      the train / val split of an image, by its id
    run.py         the two passes and the summary
"""

from labeler.export.rows import ExportError
from labeler.export.run import FORMATS, ExportOptions, ExportSummary, run_export

__all__ = ["FORMATS", "ExportError", "ExportOptions", "ExportSummary", "run_export"]
