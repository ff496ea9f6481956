"""A sample of a job's output, drawn, on a static HTML page for visual QA (`labeler preview`,
docs/preview.md).

    sample.py  the task folder; one scan of its rows: a sample chosen by a stable hash of the
               row id and seed, error rows counted by reason
    load.py    a sampled row's pixels: its image, or its frame of a video
    draw.py    boxes (a color per label), scores and OCR lines drawn, scaled to 1024 px
    page.py    index.html: the header, error counts, the grid (everything escaped)
    run.py     options, the steps, the summary the command prints
"""

from labeler.preview.run import PreviewError, PreviewOptions, PreviewSummary, run_preview

__all__ = ["PreviewError", "PreviewOptions", "PreviewSummary", "run_preview"]
