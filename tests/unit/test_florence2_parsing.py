"""Florence-2 answer parsers on canned strings (no model): every task, malformed answers,
and the box confidence rule."""

import math
import re

import pytest

from labeler.models.florence2_parsing import (
    ParseConfig,
    TokenSpan,
    dequantize,
    parse_boxes_or_polygons,
    parse_grounding,
    parse_labelled_boxes,
    parse_ocr_regions,
    parse_region_proposals,
    parse_text,
)

W, H = 100, 80  # a bin is 0.1 px of width, 0.08 px of height
SIZE = (W, H)
# Special tokens whole, any other text one character at a time: a tokenization of the
# canned strings that is fine-grained enough to test which tokens a box is scored from.
_PIECE = re.compile(r"<[^<>]*>|.", re.DOTALL)


def loc(*bins: int) -> str:
    return "".join(f"<loc_{b}>" for b in bins)


def tokens(text: str, prob=lambda piece, k: 0.5 + 0.4 * math.sin(k) ** 2) -> list[TokenSpan]:
    """One TokenSpan per piece of `text`, with probability prob(piece, index) (differs by
    index by default, so that boxes get different scores)."""
    return [TokenSpan(m.start(), m.end(), math.log(prob(m.group(), k)))
            for k, m in enumerate(_PIECE.finditer(text))]


def corners(d: dict) -> tuple:
    return d["x0"], d["y0"], d["x1"], d["y1"]


def parse(parser, text, size=SIZE, config=ParseConfig()):
    return parser(text, size, tokens(text), config)


def test_dequantize_uses_the_bin_centre_truncated():
    # (i + 0.5) * 100 / 1000: 0.05, 10.05, 50.05, 99.95 -> 0, 10, 50, 99
    assert dequantize([0, 100, 500, 999], 100) == [0.0, 10.0, 50.0, 99.0]
    # 0.5 * 3000 / 1000 = 1.5 -> 1; 999.5 * 3 = 2998.5 -> 2998 (inside the image)
    assert dequantize([0, 999], 3000) == [1.0, 2998.0]


def test_object_detection_with_several_boxes_per_label():
    text = (f"</s><s>car{loc(100, 200, 500, 800)}person{loc(0, 0, 999, 999)}"
            f"{loc(10, 10, 20, 30)}</s>")
    parsed = parse(parse_labelled_boxes, text)
    assert parsed.warnings == []
    dets = parsed.detections
    assert [d["label"] for d in dets] == ["car", "person", "person"]
    assert corners(dets[0]) == (10, 16, 50, 64)
    assert corners(dets[1]) == (0, 0, 99, 79)
    assert corners(dets[2]) == (1, 0, 2, 2)  # 10.5 * 0.1 -> 1, 10.5 * 0.08 -> 0 ...
    scores = [d["score"] for d in dets]
    assert all(0 < s <= 1 for s in scores) and len(set(scores)) == 3
    assert parsed.fields().keys() == {"detections"}


def test_confidence_is_the_geometric_mean_of_label_and_location_tokens():
    text = f"</s><s>cat{loc(1, 2, 3, 4)}{loc(5, 6, 7, 8)}"

    def prob(piece, k):
        if piece in ("</s>", "<s>"):
            return 0.01  # the markers are no part of any box
        return {"c": 0.5, "a": 0.5, "t": 0.5, "<loc_1>": 0.9, "<loc_5>": 0.2}.get(piece, 0.8)

    dets = parse_labelled_boxes(text, SIZE, tokens(text, prob)).detections
    assert dets[0]["score"] == pytest.approx((0.5**3 * 0.9 * 0.8**3) ** (1 / 7))
    # the second box shares the label's tokens, not the first box's locations
    assert dets[1]["score"] == pytest.approx((0.5**3 * 0.2 * 0.8**3) ** (1 / 7))


def test_dense_region_captions_keep_the_caption_as_label():
    text = f"<s>a red car parked{loc(10, 20, 30, 40)}  a tree {loc(50, 50, 60, 60)}</s>"
    parsed = parse(parse_labelled_boxes, text)
    assert [d["label"] for d in parsed.detections] == ["a red car parked", "a tree"]
    assert parsed.warnings == []


def test_non_ascii_is_dropped_from_labels_as_documented():
    parsed = parse(parse_labelled_boxes, f"café{loc(1, 1, 2, 2)}")
    assert parsed.detections[0]["label"] == "caf"


def test_region_proposals_have_empty_labels():
    text = f"</s><s>{loc(1, 2, 3, 4)}{loc(100, 100, 900, 900)}</s>"
    parsed = parse(parse_region_proposals, text)
    assert [d["label"] for d in parsed.detections] == ["", ""]
    assert corners(parsed.detections[1]) == (10, 8, 90, 72)
    assert parsed.warnings == []
    assert parsed.detections[0]["score"] != parsed.detections[1]["score"]


def test_phrase_grounding_labels_boxes_with_phrases_and_drops_banned_ones():
    text = (f"<s>a red car{loc(1, 2, 3, 4)}the image{loc(0, 0, 999, 999)}"
            f"a dog{loc(5, 6, 7, 8)}</s>")
    banned = ParseConfig(banned_phrases=frozenset({"the image"}))
    parsed = parse(parse_grounding, text, config=banned)
    assert [d["label"] for d in parsed.detections] == ["a red car", "a dog"]
    assert parsed.warnings == []


def test_open_vocabulary_boxes():
    parsed = parse(parse_boxes_or_polygons, f"<s>car{loc(100, 200, 500, 800)}</s>")
    assert [(d["label"], corners(d)) for d in parsed.detections] == [("car", (10, 16, 50, 64))]
    assert "polygon" not in parsed.detections[0]


def test_open_vocabulary_polygons():
    text = (f"<s>car<poly>{loc(100, 100, 500, 100, 500, 500)}<sep>{loc(0, 0, 10, 0, 10, 10, 0)}"
            f"</poly></s>")
    parsed = parse(parse_boxes_or_polygons, text)
    first, second = parsed.detections
    assert first["label"] == second["label"] == "car"
    assert first["polygon"] == [10, 8, 50, 8, 50, 40]
    assert corners(first) == (10, 8, 50, 40)
    assert second["polygon"] == [0, 0, 1, 0, 1, 0]  # the odd 7th coordinate is dropped
    second_run = text.removeprefix("<s>").index("<sep>") + len("<sep>")  # chars after <s>
    assert parsed.warnings == [f"char {second_run}: odd number of polygon coordinates, the last "
                               "dropped"]


def test_a_polygon_of_two_points_is_no_detection():
    parsed = parse(parse_boxes_or_polygons, f"car<poly>{loc(1, 2, 3, 4)}</poly>")
    assert parsed.detections == []
    assert "fewer than 3" in parsed.warnings[0]


def test_ocr_with_regions():
    text = (f"</s><s>HELLO{loc(10, 10, 500, 10, 500, 100, 10, 100)}"
            f"World 2{loc(1, 200, 2, 200, 2, 300, 1, 300)}</s>")
    parsed = parse(parse_ocr_regions, text)
    assert parsed.text == "HELLO\nWorld 2"
    first = parsed.ocr_regions[0]
    assert first["text"] == "HELLO"
    assert [first[k] for k in ("x0", "y0", "x1", "y1", "x2", "y2", "x3", "y3")] == [
        1, 0, 50, 0, 50, 8, 1, 8]
    assert parsed.warnings == []
    assert parsed.fields().keys() == {"text", "ocr_regions"}


def test_ocr_area_threshold_drops_small_quads():
    text = f"big{loc(0, 0, 999, 0, 999, 999, 0, 999)}tiny{loc(0, 0, 1, 0, 1, 1, 0, 1)}"
    parsed = parse(parse_ocr_regions, text, config=ParseConfig(ocr_min_area=0.01))
    assert [r["text"] for r in parsed.ocr_regions] == ["big"]


@pytest.mark.parametrize("token_text", ["<s>A cat on a mat.</s>", "A cat on a mat."])
def test_captions_and_plain_ocr_are_the_text_without_markers(token_text):
    parsed = parse(parse_text, token_text)
    assert parsed.text == "A cat on a mat."
    assert parsed.fields() == {"text": "A cat on a mat."}


# ---- malformed answers: what can be read, plus warnings, never an exception ----

def test_truncated_location_sequence():
    text = f"</s><s>car{loc(1, 2, 3, 4)}dog{loc(5, 6)}<loc_"
    parsed = parse(parse_labelled_boxes, text)
    assert [d["label"] for d in parsed.detections] == ["car"]
    assert len(parsed.warnings) == 1
    assert "3 location token(s) that complete no box" in parsed.warnings[0]
    assert "dog" in parsed.warnings[0]


def test_extra_location_tokens_after_the_last_box():
    parsed = parse(parse_labelled_boxes, f"car{loc(1, 2, 3, 4, 5, 6)}")
    assert len(parsed.detections) == 1
    assert parsed.warnings == ["char 0: 2 location token(s) after the last complete box of "
                               "'car' ignored"]


@pytest.mark.parametrize("parser", [parse_labelled_boxes, parse_grounding, parse_boxes_or_polygons])
def test_a_location_token_above_999_drops_its_box(parser):
    parsed = parse(parser, f"car{loc(1, 2, 3, 1000)}dog{loc(1, 2, 3, 4)}")
    assert [d["label"] for d in parsed.detections] == ["dog"]
    assert parsed.warnings == [
        "char 3: location token <loc_1000> is out of range 0..999; box dropped"]


def test_a_location_token_above_999_drops_its_ocr_region():
    parsed = parse(parse_ocr_regions, f"A{loc(1, 2, 3, 4, 5, 6, 7, 1234)}B{loc(*range(8))}")
    assert [r["text"] for r in parsed.ocr_regions] == ["B"]
    assert "<loc_1234> is out of range" in parsed.warnings[0]


@pytest.mark.parametrize("parser", [parse_labelled_boxes, parse_grounding, parse_region_proposals,
                                    parse_boxes_or_polygons])
def test_text_with_no_boxes(parser):
    parsed = parse(parser, "</s><s>a photo of a cat</s>")
    assert parsed.detections == []
    assert parsed.warnings == ["char 0: text without a box ignored: 'a photo of a cat'"]


def test_ocr_text_with_no_regions():
    parsed = parse(parse_ocr_regions, "<s>STOP</s>")
    assert parsed.ocr_regions == [] and parsed.text == ""
    assert parsed.warnings == ["char 0: text without a region ignored: 'STOP'"]


def test_ocr_truncated_region_and_stray_locations_in_a_line():
    text = f"A{loc(1, 2)}B{loc(*range(8))}C{loc(1, 2, 3)}"
    parsed = parse(parse_ocr_regions, text)
    assert [r["text"] for r in parsed.ocr_regions] == ["A<loc_1><loc_2>B"]  # as documented
    assert "form no quadrilateral" in parsed.warnings[0]
    assert "3 location token(s) that complete no region" in parsed.warnings[1]


def test_reversed_corners_are_swapped_with_a_warning():
    parsed = parse(parse_labelled_boxes, f"car{loc(500, 800, 100, 200)}")
    assert corners(parsed.detections[0]) == (10, 16, 50, 64)
    assert parsed.warnings == ["char 3: corners in reverse order, swapped"]


def test_a_label_with_a_line_break_is_dropped_with_a_warning():
    parsed = parse(parse_labelled_boxes, f"a\nb{loc(1, 2, 3, 4)}")
    assert parsed.detections == []
    assert "line break" in parsed.warnings[0]


def test_empty_answer():
    for parser in (parse_labelled_boxes, parse_region_proposals, parse_grounding,
                   parse_boxes_or_polygons, parse_ocr_regions):
        parsed = parse(parser, "</s><s></s>")
        assert parsed.warnings == [] and not (parsed.detections or parsed.ocr_regions)


def test_tokens_that_do_not_describe_the_text_are_refused():
    with pytest.raises(ValueError, match="no token span covers"):
        parse_labelled_boxes(f"car{loc(1, 2, 3, 4)}", SIZE, [])
