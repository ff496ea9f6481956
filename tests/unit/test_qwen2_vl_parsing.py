"""Qwen2-VL grounding parser and box scoring on canned strings (no model)."""

import math

import pytest

from labeler.models.qwen2_vl_parsing import (
    BOX_END,
    BOX_START,
    REF_END,
    REF_START,
    parse_grounding,
    span_confidence,
)

W, H = 640, 480  # a 4:3 image: x maps by 0.64 px per grid unit, y by 0.48


def ref(label: str) -> str:
    return f"{REF_START}{label}{REF_END}"


def box(body: str) -> str:
    return f"{BOX_START}{body}{BOX_END}"


def corners(b) -> tuple[float, float, float, float]:
    return b.x0, b.y0, b.x1, b.y1


def test_several_references_and_boxes():
    text = (f"Here: {ref('the cat')}{box('(100,200),(300,400)')} and "
            f"{ref('a dog')}{box('(0, 0), (1000, 1000)')}{box('(500,500),(600,700)')}.")
    boxes, warnings = parse_grounding(text, W, H)
    assert warnings == []
    assert [b.label for b in boxes] == ["the cat", "a dog", "a dog"]  # a dog's second box
    assert corners(boxes[0]) == pytest.approx((64, 96, 192, 192))
    assert corners(boxes[1]) == pytest.approx((0, 0, W, H))
    assert corners(boxes[2]) == pytest.approx((320, 240, 384, 336))
    first = text.index(BOX_START)
    assert (boxes[0].start, boxes[0].end) == (first, text.index(BOX_END) + len(BOX_END))


def test_a_box_before_any_reference_has_an_empty_label():
    boxes, warnings = parse_grounding(box("(10,20),(30,40)") + ref("cup") + box("(1,2),(3,4)"),
                                      1000, 1000)
    assert [b.label for b in boxes] == ["", "cup"] and warnings == []
    assert corners(boxes[0]) == (10, 20, 30, 40)


def test_a_truncated_box_is_dropped_with_a_warning():
    text = ref("car") + box("(1,2),(3,4)") + f"{BOX_START}(12,34),(5"
    boxes, warnings = parse_grounding(text, W, H)
    assert [b.label for b in boxes] == ["car"]
    assert len(warnings) == 1 and "truncated box" in warnings[0] and "(12,34),(5" in warnings[0]


def test_a_complete_box_missing_its_end_token_is_kept_with_a_warning():
    boxes, warnings = parse_grounding(f"{BOX_START}(100,100),(200,200)", 1000, 1000)
    assert corners(boxes[0]) == (100, 100, 200, 200)
    assert len(warnings) == 1 and "no <|box_end|>" in warnings[0]


def test_coordinates_beyond_the_grid_are_clipped_with_a_warning():
    boxes, warnings = parse_grounding(box("(-5,20),(1200,1001)"), W, H)
    assert corners(boxes[0]) == pytest.approx((0, 20 * 0.48, W, H))
    assert len(warnings) == 1 and "clipped" in warnings[0]


def test_reversed_corners_are_swapped_with_a_warning():
    boxes, warnings = parse_grounding(box("(300,400),(100,200)"), W, H)
    assert corners(boxes[0]) == pytest.approx((64, 96, 192, 192))
    assert len(warnings) == 1 and "swapped" in warnings[0]


@pytest.mark.parametrize("text", [
    "", "a cat sitting on a mat", "(100,200),(300,400)", "\x0e\n\\te\ufffd[{q",
    "<|box_start|", "<box>(1,2),(3,4)</box>",
])
def test_text_without_markers_gives_nothing_and_no_warning(text):
    assert parse_grounding(text, W, H) == ([], [])


@pytest.mark.parametrize("text, expected", [
    (box("cat"), "not two points"),
    (box("(1,2)"), "not two points"),
    (box("(1,2),(3,4),(5,6)"), "not two points"),
    (box("(1,2),(a,4)"), "not two points"),
    (f"{BOX_START}{BOX_START}(1,2),(3,4){BOX_END}", "not two points"),
    (BOX_END, "without <|box_start|>"),
    (REF_END + "x", "without <|object_ref_start|>"),
    (REF_START + "dangling", "never closed"),
])
def test_malformed_markup_yields_warnings_not_exceptions(text, expected):
    boxes, warnings = parse_grounding(text, W, H)
    assert any(expected in w for w in warnings), warnings


def test_garbage_around_markers_still_parses_what_it_can():
    text = f"\ufffd\x02{REF_START}{REF_START}x{REF_END}{BOX_END}{box('(1,2),(3,4)')}junk{BOX_START}"
    boxes, warnings = parse_grounding(text, 1000, 1000)
    assert [(b.label, corners(b)) for b in boxes] == [("x", (1, 2, 3, 4))]
    assert len(warnings) == 3  # nested reference, stray box end, truncated empty box


def test_an_unclosed_reference_ends_at_its_box():
    boxes, warnings = parse_grounding(f"{REF_START} a kite {box('(1,2),(3,4)')}", 1000, 1000)
    assert boxes[0].label == "a kite"
    assert "has no <|object_ref_end|>" in warnings[0]


def test_decimal_and_spaced_coordinates():
    boxes, warnings = parse_grounding(box(" ( 250.5 , 0 ) , ( 750 , 500.0 ) "), 1000, 2000)
    assert corners(boxes[0]) == pytest.approx((250.5, 0, 750, 1000)) and warnings == []


def test_span_confidence_is_the_geometric_mean_of_the_overlapping_tokens():
    # tokens: "ab" (a run of two tokens), "<|box_start|>" 2..15, "(1,2),(3,4)" a run of three
    # tokens 15..26, "<|box_end|>" 26..37, an end-of-turn token that left no text.
    spans = [(0, 2), (0, 2), (2, 15), (15, 26), (15, 26), (15, 26), (26, 37), (37, 37)]
    logprobs = [-9.0, -9.0, -0.1, -0.2, -0.3, -0.4, -0.5, -9.0]
    score = span_confidence(spans, logprobs, 2, 37)
    assert score == pytest.approx(math.exp(-1.5 / 5))
    assert span_confidence(spans, logprobs, 15, 26) == pytest.approx(math.exp(-0.3))
