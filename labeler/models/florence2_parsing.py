"""Pure parsers of Florence-2 answers: generated text in, record fields and warnings out.

Florence-2 answers every task as text. Boxes, quadrilaterals and polygons are written with
location tokens `<loc_i>`, i in 0..999: bin i of 1000 equal bins along the width (x) or the
height (y) of the image. The processor resizes every image to its square input without
padding, so a bin is a fraction of the original width or height, and a bin maps to the pixel

    int((i + 0.5) * size / 1000)        (float32 arithmetic, truncated: the bin's centre)

exactly as `Florence2Processor.post_process_generation(text, task=..., image_size=(w, h))`
(transformers, the documented usage) computes it. Every pixel lies in [0, size), inside the
image. The answers are matched with the same regular expressions as transformers'
`Florence2PostProcessor`, so well-formed and malformed text alike give the documented
boxes, labels and texts; what that post-processor drops or keeps silently is reported here
in `warnings` (a row never fails on model text):

- location tokens that complete no box (1-3 after the last complete group, a cut `<loc_`),
  and text that carries no box, in the box tasks; text left after the last OCR region;
- a bin above 999 (no such token exists, so only foreign text holds one): that box, quad or
  polygon is dropped (the documented usage would return it, outside the image);
- corners in reverse order (x0 > x1 or y0 > y1): swapped, since a record's box is
  top-left / bottom-right;
- an odd number of polygon coordinates (the last is dropped, as documented), a polygon of
  fewer than 3 points (no detection), an OCR line whose text holds location tokens.

Confidence. Florence-2 scores nothing, so a box's score is derived from the generation: the
geometric mean, exp(mean log p), of the probabilities of the tokens that wrote it, that is
its location tokens (4 for a box, all of a polygon's) and the tokens of its label (shared by
the boxes of one label; a region proposal has none). Tokens are matched by the characters
they decoded to (`TokenSpan`): a token counts when its characters overlap the label's or the
box's. The adapter supplies each generated token's log-probability (see florence2.py).
"""

from __future__ import annotations

import math
import re
from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

LOC_BINS = 1000  # Florence-2 quantizes each coordinate into 1000 bins: <loc_0> .. <loc_999>
# The markers the documented post-processing removes (in this order) before matching.
_REMOVED_MARKERS = ("<s>", "</s>", "<pad>")
# Model text quoted in a warning is cut to this many characters, to keep rows small.
_QUOTE_CHARS = 60
# A polygon needs at least 3 points to enclose anything.
_MIN_POLYGON_POINTS = 3

# The patterns of transformers' Florence2PostProcessor (description_with_bboxes, bboxes,
# phrase_grounding, ocr, description_with_polygons), kept as they are so that the parsed
# boxes are the documented ones.
_LABELLED_BOXES = re.compile(r"[^<]+(?:<loc_\d+>){4,}")
_UNLABELLED_BOXES = re.compile(r"(?:<loc_\d+>){4,}")
_LABEL = re.compile(r"^\s*(.*?)(?=<od>|</od>|<box>|</box>|<bbox>|</bbox>|<loc_)")
_BOX = re.compile(r"<loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)>")
_OCR_LINE = re.compile(r"(.+?)" + r"<loc_(\d+)>" * 8)  # a line of text, then 4 (x, y) corners
_POLYGON_PHRASES = re.compile(r"[^<]+(?:<loc_\d+>|<sep>|<poly>|</poly>){4,}")
_POLYGON_LABEL = re.compile(r"^\s*(.*?)(?=<od>|</od>|<box>|</box>|<bbox>|</bbox>|<loc_|<poly>)")
_POLYGON_BODY = re.compile(r"<poly>(.*?)</poly>")
_POLYGON_RUN = re.compile(r"((?:<loc_\d+>)+)(?:<sep>|$)")
_LOC = re.compile(r"<loc_(\d+)>")
# A location token, whole or cut short at the end of the text.
_LOC_OR_FRAGMENT = re.compile(r"<loc_\d*>?")


@dataclass(frozen=True)
class TokenSpan:
    """One generated token: the characters [start, end) of the decoded text that it produced,
    and its log-probability (natural log, <= 0)."""

    start: int
    end: int
    logprob: float


@dataclass(frozen=True)
class ParseConfig:
    """Options of a checkpoint's post-processor config (`post_processor_config` of the
    processor). banned_phrases: grounding phrases dropped (`banned_grounding_tokens`);
    ocr_min_area: OCR quads smaller than this fraction of the image are dropped
    (`ocr.AREA_THRESHOLD`; 0 in the released checkpoints)."""

    banned_phrases: frozenset[str] = frozenset()
    ocr_min_area: float = 0.0


@dataclass
class Parsed:
    """Record fields read from one answer (None: not a field of this task)."""

    detections: list[dict] | None = None
    text: str | None = None
    ocr_regions: list[dict] | None = None
    warnings: list[str] = field(default_factory=list)

    def fields(self) -> dict:
        """The record fields that are set; `warnings` only when there are some."""
        out = {k: v for k, v in (("detections", self.detections), ("text", self.text),
                                 ("ocr_regions", self.ocr_regions)) if v is not None}
        if self.warnings:
            out["warnings"] = list(self.warnings)
        return out


Parser = Callable[[str, tuple[int, int], Sequence[TokenSpan], ParseConfig], Parsed]


def dequantize(bins: Sequence[int], size: int) -> list[float]:
    """Location bins (0..999) along an axis of `size` pixels -> pixels, as transformers does:
    float32 (bin + 0.5) * float32(size / 1000), truncated to an integer."""
    per_bin = np.float32(size / LOC_BINS)
    centres = (np.asarray(bins, dtype=np.float32) + np.float32(0.5)) * per_bin
    return np.trunc(centres).astype(np.float64).tolist()


def dequantize_points(bins: Sequence[int], image_size: tuple[int, int]) -> list[float]:
    """Bins as x, y, x, y, ... (even length) -> pixels in the same order; image_size (w, h)."""
    width, height = image_size
    xs, ys = dequantize(bins[0::2], width), dequantize(bins[1::2], height)
    return [v for point in zip(xs, ys) for v in point]


def _quote(text: str) -> str:
    return repr(text if len(text) <= _QUOTE_CHARS else text[:_QUOTE_CHARS] + "...")


class _Answer:
    """The generated text with the documented markers removed (`clean`), and for each
    character of `clean` its position in the original text (`origin`), so that matches
    in `clean` find the tokens that wrote them."""

    def __init__(self, text: str, tokens: Sequence[TokenSpan]):
        clean, origin = text, list(range(len(text)))
        for marker in _REMOVED_MARKERS:  # str.replace order and semantics, one marker at a time
            kept_text, kept_origin, pos = [], [], 0
            while (hit := clean.find(marker, pos)) >= 0:
                kept_text.append(clean[pos:hit])
                kept_origin.extend(origin[pos:hit])
                pos = hit + len(marker)
            kept_text.append(clean[pos:])
            kept_origin.extend(origin[pos:])
            clean, origin = "".join(kept_text), kept_origin
        self.clean, self.origin = clean, origin
        # Tokens in text order: starts and ends both non-decreasing, so bisect finds them.
        self.tokens = sorted((t for t in tokens if t.end > t.start), key=lambda t: t.start)
        self.ends = [t.end for t in self.tokens]

    def confidence(self, *spans: tuple[int, int]) -> float:
        """Geometric mean of the probabilities of the tokens whose characters overlap any of
        the [start, end) spans of `clean`."""
        chosen: set[int] = set()
        for start, end in spans:
            for pos in self.origin[start:end]:
                k = bisect_right(self.ends, pos)  # the first token ending after pos
                while k < len(self.tokens) and self.tokens[k].start <= pos:
                    chosen.add(k)
                    k += 1
        if not chosen:
            raise ValueError(f"no token span covers characters {spans}: the tokens given do "
                             "not describe this text")
        return math.exp(sum(self.tokens[k].logprob for k in chosen) / len(chosen))


def _box_fields(bins: list[int], image_size: tuple[int, int], where: str,
                warnings: list[str]) -> dict | None:
    """4 bins (x0, y0, x1, y1) -> {x0, y0, x1, y1} pixels with ordered corners; None (and a
    warning) when a bin is out of range."""
    if max(bins) >= LOC_BINS:
        warnings.append(f"{where}: location token <loc_{max(bins)}> is out of range "
                        f"0..{LOC_BINS - 1}; box dropped")
        return None
    x0, y0, x1, y1 = dequantize_points(bins, image_size)
    if x0 > x1 or y0 > y1:
        warnings.append(f"{where}: corners in reverse order, swapped")
        x0, x1, y0, y1 = min(x0, x1), max(x0, x1), min(y0, y1), max(y0, y1)
    return {"x0": x0, "y0": y0, "x1": x1, "y1": y1}


def _label_span(phrase_start: int, label_match: re.Match) -> tuple[int, int]:
    """Span in `clean` of a label match's text without its surrounding whitespace."""
    raw = label_match.group()
    start = phrase_start + label_match.start() + len(raw) - len(raw.lstrip())
    return start, start + len(raw.strip())


def _report_leftovers(clean: str, covered: list[tuple[int, int]], warnings: list[str],
                      what: str) -> None:
    """Warn about location tokens and text outside the matched spans of `clean`."""
    pos, gaps = 0, []
    for start, end in covered:
        gaps.append((pos, start))
        pos = end
    gaps.append((pos, len(clean)))
    for start, end in gaps:
        gap = clean[start:end]
        locs = _LOC_OR_FRAGMENT.findall(gap)
        if locs:
            warnings.append(f"char {start}: {len(locs)} location token(s) that complete no "
                            f"{what} ignored: {_quote(gap.strip())}")
        elif gap.strip():
            warnings.append(f"char {start}: text without a {what} ignored: {_quote(gap.strip())}")


def _parse_boxes(text: str, image_size: tuple[int, int], tokens: Sequence[TokenSpan],
                 labelled: bool, banned: frozenset[str] = frozenset()) -> Parsed:
    """Shared by the box tasks: `label<loc><loc><loc><loc>...` (several boxes may follow one
    label), or bare groups of 4 location tokens when not `labelled`."""
    answer, warnings, detections, covered = _Answer(text, tokens), [], [], []
    pattern = _LABELLED_BOXES if labelled else _UNLABELLED_BOXES
    for match in pattern.finditer(answer.clean):
        covered.append(match.span())
        phrase_text, where = match.group(), f"char {match.start()}"
        label_match = _LABEL.search(phrase_text)
        if label_match is None:  # `.` stops at a line break inside the label
            warnings.append(f"{where}: label with a line break ignored: {_quote(phrase_text)}")
            continue
        phrase = label_match.group().strip()
        if phrase in banned:
            continue
        label = phrase.encode("ascii", "ignore").decode("ascii")  # as documented
        label_span = _label_span(match.start(), label_match)
        boxes = list(_BOX.finditer(phrase_text))
        extra = len(_LOC.findall(phrase_text)) - 4 * len(boxes)
        if extra:
            warnings.append(f"{where}: {extra} location token(s) after the last complete box "
                            f"of {label!r} ignored")
        for box in boxes:
            bins = [int(v) for v in box.groups()]
            fields = _box_fields(bins, image_size, f"char {match.start() + box.start()}", warnings)
            if fields is None:
                continue
            box_span = (match.start() + box.start(), match.start() + box.end())
            score = answer.confidence(label_span, box_span)
            detections.append({"label": label, "score": score, **fields})
    _report_leftovers(answer.clean, covered, warnings, "box")
    return Parsed(detections=detections, warnings=warnings)


def parse_labelled_boxes(text: str, image_size: tuple[int, int], tokens: Sequence[TokenSpan],
                         config: ParseConfig = ParseConfig()) -> Parsed:
    """<OD> and <DENSE_REGION_CAPTION>: `label<loc_x0><loc_y0><loc_x1><loc_y1>` repeated ->
    detections (label: the class name or the region's caption, ASCII only as documented)."""
    return _parse_boxes(text, image_size, tokens, labelled=True)


def parse_region_proposals(text: str, image_size: tuple[int, int], tokens: Sequence[TokenSpan],
                           config: ParseConfig = ParseConfig()) -> Parsed:
    """<REGION_PROPOSAL>: groups of 4 location tokens -> detections with label ""."""
    return _parse_boxes(text, image_size, tokens, labelled=False)


def parse_grounding(text: str, image_size: tuple[int, int], tokens: Sequence[TokenSpan],
                    config: ParseConfig = ParseConfig()) -> Parsed:
    """<CAPTION_TO_PHRASE_GROUNDING>: `phrase<loc>x4...` -> detections labelled with the
    phrases; phrases in config.banned_phrases are dropped, as documented."""
    return _parse_boxes(text, image_size, tokens, labelled=True, banned=config.banned_phrases)


def _polygon_detections(answer: _Answer, image_size: tuple[int, int],
                        warnings: list[str]) -> list[dict]:
    """The documented polygon parsing (description_with_polygons): `label<poly>locs<sep>
    locs</poly>`, or `label` then runs of location tokens ended by <sep> or the text's end.
    Each polygon of >= 3 points -> a detection: its bounding box and the polygon."""
    detections, covered = [], []
    for match in _POLYGON_PHRASES.finditer(answer.clean):
        covered.append(match.span())
        phrase_text, offset = match.group(), match.start()
        label_match = _POLYGON_LABEL.search(phrase_text)
        if label_match is None:
            warnings.append(f"char {offset}: polygon without a label ignored: "
                            f"{_quote(phrase_text)}")
            continue
        label = label_match.group().strip()
        label_span = _label_span(offset, label_match)
        if "<poly>" in phrase_text and "</poly>" in phrase_text:
            bodies = [(m.group(1), m.start(1)) for m in _POLYGON_BODY.finditer(phrase_text)]
        else:
            bodies = [(phrase_text, 0)]
        for body, body_start in bodies:
            for run in _POLYGON_RUN.finditer(body):
                start = offset + body_start + run.start(1)
                bins = [int(v) for v in _LOC.findall(run.group(1))]
                if len(bins) % 2:
                    warnings.append(f"char {start}: odd number of polygon coordinates, the "
                                    "last dropped")
                    bins = bins[:-1]
                if bins and max(bins) >= LOC_BINS:
                    warnings.append(f"char {start}: location token <loc_{max(bins)}> is out "
                                    f"of range 0..{LOC_BINS - 1}; polygon dropped")
                    continue
                if len(bins) < 2 * _MIN_POLYGON_POINTS:
                    warnings.append(f"char {start}: polygon of {len(bins) // 2} point(s) "
                                    f"ignored (fewer than {_MIN_POLYGON_POINTS})")
                    continue
                polygon = dequantize_points(bins, image_size)
                xs, ys = polygon[0::2], polygon[1::2]
                score = answer.confidence(label_span, (start, offset + body_start + run.end(1)))
                detections.append({"label": label, "score": score, "x0": min(xs), "y0": min(ys),
                                   "x1": max(xs), "y1": max(ys), "polygon": polygon})
    _report_leftovers(answer.clean, covered, warnings, "polygon")
    return detections


def parse_boxes_or_polygons(text: str, image_size: tuple[int, int],
                            tokens: Sequence[TokenSpan],
                            config: ParseConfig = ParseConfig()) -> Parsed:
    """<OPEN_VOCABULARY_DETECTION>: as documented, polygons when the answer holds <poly>
    anywhere, else labelled boxes."""
    if "<poly>" not in text:
        return _parse_boxes(text, image_size, tokens, labelled=True)
    warnings: list[str] = []
    detections = _polygon_detections(_Answer(text, tokens), image_size, warnings)
    return Parsed(detections=detections, warnings=warnings)


def _documented_quad_area(quad: list[float]) -> float:
    """The area transformers compares with AREA_THRESHOLD: its shoelace sum stops one edge
    short of the closing one; kept so that the same quads are dropped."""
    xs, ys = quad[0::2], quad[1::2]
    return 0.5 * abs(sum(xs[i] * ys[i + 1] - xs[i + 1] * ys[i] for i in range(3)))


def parse_ocr_regions(text: str, image_size: tuple[int, int], tokens: Sequence[TokenSpan],
                      config: ParseConfig = ParseConfig()) -> Parsed:
    """<OCR_WITH_REGION>: `line<loc>x8` repeated (4 corners, clockwise from the top-left) ->
    ocr_regions and text (the lines joined with newlines)."""
    answer, warnings, regions, covered = _Answer(text, tokens), [], [], []
    width, height = image_size
    for match in _OCR_LINE.finditer(answer.clean):
        covered.append(match.span())
        where = f"char {match.start()}"
        bins = [int(v) for v in match.groups()[1:]]
        if max(bins) >= LOC_BINS:
            warnings.append(f"{where}: location token <loc_{max(bins)}> is out of range "
                            f"0..{LOC_BINS - 1}; region dropped")
            continue
        quad = dequantize_points(bins, image_size)
        if config.ocr_min_area > 0 and (
                _documented_quad_area(quad) < width * height * config.ocr_min_area):
            continue
        line = match.group(1).strip()
        if "<loc_" in line:
            warnings.append(f"{where}: text of the region holds location tokens that form "
                            f"no quadrilateral: {_quote(line)}")
        regions.append({"text": line, **dict(zip(
            ("x0", "y0", "x1", "y1", "x2", "y2", "x3", "y3"), quad))})
    _report_leftovers(answer.clean, covered, warnings, "region")
    return Parsed(text="\n".join(r["text"] for r in regions), ocr_regions=regions,
                  warnings=warnings)


def parse_text(text: str, image_size: tuple[int, int], tokens: Sequence[TokenSpan],
               config: ParseConfig = ParseConfig()) -> Parsed:
    """Captions and <OCR>: the text without <s> and </s>, stripped (as documented)."""
    return Parsed(text=text.replace("<s>", "").replace("</s>", "").strip())
