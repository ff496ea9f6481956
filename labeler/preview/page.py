"""The preview page: one self-contained static HTML file (inline CSS, no script, nothing
fetched from the network) beside the drawn images it shows (`images/*.jpg`, relative links).

Every text that comes from the job (ids, uris, labels, captions, answers, OCR text, error
reasons, the model's name, the output path) is HTML-escaped, quotes included.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from html import escape
from urllib.parse import quote

from labeler.export.rows import BOX_TASKS, Reasons
from labeler.preview.draw import UNNAMED_LABEL, label_color
from labeler.export.rows import Box
from labeler.preview.sample import SampledRow

# Detections listed under an image (the strongest); the others are counted.
LABELS_LISTED = 40
# In every page's head: what tells an earlier preview (whose images a new one may replace)
# from someone's own index.html.
PREVIEW_MARK = '<meta name="generator" content="labeler preview">'
# Error reasons shown with their counts.
TOP_REASONS = 20

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.4em;margin:0 0 .4em} h2{font-size:1.1em;margin:1.4em 0 .4em}
dl.meta{display:grid;grid-template-columns:max-content 1fr;gap:.15em 1em;margin:0}
dl.meta dt{color:#666} dl.meta dd{margin:0;word-break:break-all}
table{border-collapse:collapse;margin:.3em 0} td,th{border:1px solid #ddd;padding:.2em .5em;
text-align:left;vertical-align:top;word-break:break-all} th{background:#eee}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(320px,1fr));gap:1em}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.6em;overflow:hidden}
.card img{width:100%;height:auto;display:block;border-radius:3px}
.id{font-weight:600;word-break:break-all} .small{color:#666;font-size:.9em}
.text{white-space:pre-wrap;background:#f3f3f3;padding:.3em .5em;border-radius:3px}
.problem{color:#a40000;white-space:pre-wrap;word-break:break-all}
.labels{list-style:none;padding:0;margin:.3em 0;display:flex;flex-wrap:wrap;gap:.25em}
.labels li{border-left:.6em solid;padding:0 .4em;background:#f3f3f3;border-radius:2px}
.missing{height:120px;display:flex;align-items:center;justify-content:center;
background:#eee;color:#888;border-radius:3px}
"""


@dataclass
class Entry:
    """One cell of the grid. image: the drawn JPEG's path relative to the page, None when it
    could not be made; problem: why there is no image, or why its boxes are not drawn;
    boxes: the boxes drawn (at or over --min-score), hidden_boxes: those under it."""

    row: SampledRow
    image: str | None = None
    problem: str | None = None
    boxes: tuple[Box, ...] = ()
    hidden_boxes: int = 0


@dataclass
class PageInfo:
    """The header: what was previewed, and how. model: the task's model, model_family and
    model_revision (from its first row); rows: rows read; good_rows: rows without an error;
    errors: error rows by reason; error_rows: some of them (reason and uri listed)."""

    job: str
    finished: bool
    task: str
    kind: str
    model: dict
    rows: int
    good_rows: int
    errors: Reasons
    error_rows: list[SampledRow] = field(default_factory=list)
    limit: int = 0
    seed: int = 0
    min_score: float | None = None
    errors_only: bool = False
    ids_file: str | None = None  # the rows were those of the ids in this file, not a sample


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def render_page(info: PageInfo, entries: list[Entry]) -> str:
    """The whole page as a string (write it as UTF-8 to index.html)."""
    without_image = sum(1 for e in entries if e.image is None)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        PREVIEW_MARK,
        f"<title>labeler preview: {_e(info.task)}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>Preview of task {_e(info.task)} <span class=small>({_e(info.kind)})</span></h1>",
        _header(info, len(entries), without_image),
        _errors(info),
        f"<h2>{'Error rows' if info.errors_only else 'Sample'}: {len(entries)} shown</h2>",
    ]
    if entries:
        parts.append('<div class="grid">')
        boxed = info.kind in BOX_TASKS and not info.errors_only
        parts += [_card(entry, boxed) for entry in entries]
        parts.append("</div>")
    else:
        parts.append("<p>No rows to show.</p>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _header(info: PageInfo, shown: int, without_image: int) -> str:
    model = info.model.get("model") or "?"
    family = info.model.get("model_family")
    revision = info.model.get("model_revision")
    model_text = _e(model) + (f" ({_e(family)})" if family else "") + (
        f" at revision {_e(revision)}" if revision else "")
    pool = ("error rows" if info.errors_only else "rows without an error")
    pool_size = info.errors.total if info.errors_only else info.good_rows
    sampling = (f"{shown} of {pool_size} {pool}, chosen by a hash of the row id with seed "
                f"{info.seed} (--limit {info.limit})" if info.ids_file is None else
                f"{shown} of {pool_size} {pool}: those of the ids in {info.ids_file}, in its "
                f"order (--limit {info.limit})")
    items = [("job output", _e(info.job) + ("" if info.finished else
                                             " <b>(no _SUCCESS: the job did not finish)</b>")),
             ("task", f"{_e(info.task)} ({_e(info.kind)})"),
             ("model", model_text),
             ("rows scanned", str(info.rows)),
             ("shown", _e(sampling)),
             ("error rows", str(info.errors.total))]
    if without_image:
        items.append(("shown without image", f"{without_image} (the reason is on each)"))
    if info.min_score is not None:
        items.append(("--min-score", f"{info.min_score:g}: weaker boxes hidden"))
    return ('<dl class="meta">'
            + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in items) + "</dl>")


def _errors(info: PageInfo) -> str:
    if not info.errors.total:
        return ""
    rows = "".join(f"<tr><td>{n}</td><td>{_e(reason)}</td></tr>"
                   for reason, n in info.errors.top(TOP_REASONS))
    out = [f"<h2>Errors: {info.errors.total} rows</h2>",
           f"<table><tr><th>rows</th><th>reason</th></tr>{rows}</table>"]
    if info.error_rows and not info.errors_only:
        listed = "".join(f"<tr><td>{_e(r.id)}</td><td>{_e(r.uri)}</td><td>{_e(r.error)}</td></tr>"
                         for r in info.error_rows)
        more = info.errors.total - len(info.error_rows)
        out.append(f"<table><tr><th>id</th><th>uri</th><th>reason</th></tr>{listed}</table>")
        if more:
            out.append(f"<p class=small>and {more} more error rows (--errors shows them as "
                       f"a grid)</p>")
    return "\n".join(out)


def _card(entry: Entry, boxed: bool) -> str:
    """A cell of the grid; boxed: the task's rows carry boxes (their count is shown)."""
    row = entry.row
    out = ['<div class="card">']
    if entry.image is not None:
        out.append(f'<a href="{_e(quote(entry.image))}"><img src="{_e(quote(entry.image))}" '
                   f'alt="{_e(row.id)}" loading="lazy"></a>')
    else:
        out.append('<div class="missing">no image</div>')
    out.append(f'<div class="id">{_e(row.id)}</div>')
    where = []
    if row.is_frame:
        time = "" if row.timestamp_s is None else f" at {row.timestamp_s:.3f} s"
        where.append(f"frame {row.frame_index}{time}")
    if row.is_clip:
        end = "" if row.clip_end_s is None else f"-{row.clip_end_s:.3f}"
        where.append(f"clip {row.clip_start_s:.3f}{end} s (its first frame)")
    if row.width is not None and row.height is not None:
        where.append(f"{row.width}x{row.height}")
    if boxed:
        n = len(entry.boxes)
        count = f"{n} box{'' if n == 1 else 'es'}" if row.boxes else "no boxes"
        if entry.hidden_boxes:
            count += f" (+{entry.hidden_boxes} under --min-score hidden)"
        where.append(count)
    out.append(f'<div class="small">{_e(", ".join(where))}</div>')
    out.append(f'<div class="small">{_e(row.uri)}</div>')
    if row.error is not None:
        out.append(f'<div class="problem">error: {_e(row.error)}</div>')
    if row.kept is False:
        out.append(f'<div class="problem">not kept: {_e(row.filter_reason or "no reason")}'
                   f'</div>')
    if entry.problem:
        out.append(f'<div class="problem">{_e(entry.problem)}</div>')
    if row.text is not None:
        out.append(f'<div class="text">{_e(row.text)}</div>')
    if entry.boxes:
        strongest = sorted(entry.boxes, key=lambda b: -b.score)
        items = "".join(
            f'<li style="border-color:rgb{label_color(b.label)}">'
            f"{_e(b.label or UNNAMED_LABEL)} {b.score:.2f}</li>" for b in strongest[:LABELS_LISTED])
        more = len(strongest) - LABELS_LISTED
        out.append(f'<ul class="labels">{items}'
                   + (f"<li>+{more} more</li>" if more > 0 else "") + "</ul>")
    if row.ocr:
        lines = "".join(f"<li>{_e(line.text)}</li>" for line in row.ocr[:LABELS_LISTED])
        out.append(f'<div class="small">{len(row.ocr)} OCR lines</div><ol>{lines}</ol>')
    out.append("</div>")
    return "\n".join(out)
