"""Tile geometry and the merge of tiles' boxes (labeler.models.tiling), and tiling specs."""

import numpy as np
import pytest

from labeler.config import SpecError, TaskSpec, TilingSpec, decode_side_for_tasks, load_job_spec
from labeler.models.tiling import cut_windows, merge_windows, tile_windows


def test_windows_cover_the_image_with_the_asked_overlap():
    tiling = TilingSpec(grid=(2, 2), overlap=0.25)
    windows = tile_windows(100, 60, tiling)
    # Tile width 100 / (2 - 0.25) = 57.14, every 42.86; height 60 / 1.75 = 34.29, every 25.71.
    assert windows == [(0, 0, 100, 60),
                       (0, 0, 57, 34), (43, 0, 100, 34),
                       (0, 26, 57, 60), (43, 26, 100, 60)]
    assert len(windows) == tiling.inputs_per_image == 5


def test_a_grid_without_the_whole_image_and_a_row_of_three():
    windows = tile_windows(90, 40, TilingSpec(grid=(3, 1), overlap=0.0, full_image=False))
    assert windows == [(0, 0, 30, 40), (30, 0, 60, 40), (60, 0, 90, 40)]


def test_tiles_of_a_tiny_image_keep_at_least_a_pixel():
    for x0, y0, x1, y1 in tile_windows(3, 2, TilingSpec(grid=(8, 8), overlap=0.4)):
        assert 0 <= x0 < x1 <= 3 and 0 <= y0 < y1 <= 2


def test_cut_windows_are_views_of_the_pixels_in_the_windows():
    pixels = np.arange(60 * 100 * 3, dtype=np.int64).reshape(60, 100, 3)
    tiling = TilingSpec(grid=(2, 2), overlap=0.25)
    for window, (x0, y0, x1, y1) in zip(cut_windows(pixels, tiling), tile_windows(100, 60, tiling)):
        assert np.shares_memory(window, pixels)
        assert np.array_equal(window, pixels[y0:y1, x0:x1])


def _box(label, score, x0, y0, x1, y1, **extra):
    return {"label": label, "score": score, "x0": x0, "y0": y0, "x1": x1, "y1": y1, **extra}


def test_a_box_cut_by_a_tile_edge_merges_into_the_whole_objects_box():
    whole_image = [_box("car", 0.6, 40, 10, 80, 30)]
    left_tile = [_box("car", 0.9, 40, 10, 57, 30, objectness=0.7)]  # cut at the tile's edge
    right_tile = [_box("car", 0.5, 43, 11, 81, 29)]
    merged = merge_windows([whole_image, left_tile, right_tile], threshold=0.5)
    # The best box leads: its score and extra keys, grown to the box around all three.
    assert merged == [_box("car", 0.9, 40, 10, 81, 30, objectness=0.7)]


def test_labels_merge_apart_and_weak_overlaps_stay_separate():
    merged = merge_windows([[_box("car", 0.8, 0, 0, 10, 10), _box("dog", 0.7, 0, 0, 10, 10)],
                            [_box("car", 0.6, 8, 0, 18, 10)]], threshold=0.5)
    # car 0.6 covers 2/10 of itself with car 0.8: IoS 0.2 < 0.5, so it stays.
    assert merged == [_box("car", 0.8, 0, 0, 10, 10), _box("dog", 0.7, 0, 0, 10, 10),
                      _box("car", 0.6, 8, 0, 18, 10)]
    assert len(merge_windows([[_box("car", 0.8, 0, 0, 10, 10)], [_box("car", 0.6, 8, 0, 18, 10)]],
                             threshold=0.2)) == 1


def test_a_box_flattened_by_clipping_merges_with_nothing():
    flat = _box("car", 0.9, 5, 10, 5, 10)
    merged = merge_windows([[flat], [_box("car", 0.5, 0, 0, 10, 20)]], threshold=0.5)
    assert merged == [flat, _box("car", 0.5, 0, 0, 10, 20)]


def test_a_matched_box_that_no_longer_matches_the_grown_box_is_dropped_as_sahi_does():
    lead = _box("car", 0.9, 0, 0, 10, 10)
    wide = _box("car", 0.8, 0, 0, 40, 10)  # all of lead inside it: IoS 1, box grows to 40 wide
    tall = _box("car", 0.7, 0, 0, 10, 40)  # IoS 1 with lead, but 0.25 of itself in the grown box
    merged = merge_windows([[lead, wide, tall]], threshold=0.5)
    assert merged == [_box("car", 0.9, 0, 0, 40, 10)]


@pytest.mark.parametrize("grid, overlap, message", [
    ((1, 1), 0.2, "whole image"), ((9, 2), 0.2, "1 to 8"), ((2, 0), 0.2, "1 to 8"),
    ((2, 2), 0.5, "less than 0.5"), ((2, 2), -0.1, "greater than or equal to 0")])
def test_bad_grids_and_overlaps_are_refused(grid, overlap, message):
    with pytest.raises(ValueError, match=message):
        TilingSpec(grid=grid, overlap=overlap)


def test_tiles_apply_to_owlv2_detectors_only(tiny_owlv2, tiny_model):
    for task in ("detect", "ground"):
        TaskSpec(task=task, model={"family": "owlv2", "source": tiny_owlv2}, labels=["cat"],
                 tiles={"grid": [2, 2]})
    with pytest.raises(ValueError, match="tiles apply to tasks detect, ground, "
                                         "detect-by-example of family owlv2, not 'caption'"):
        TaskSpec(task="caption", model={"family": "florence2", "source": tiny_model("florence2")},
                 tiles={"grid": [2, 2]})


def test_tiled_tasks_decode_jpegs_large_enough_for_each_tile(tiny_owlv2):
    def task(tiles):
        return TaskSpec(task="detect", model={"family": "owlv2", "source": tiny_owlv2},
                        labels=["cat"], tiles=tiles)
    plain, two, three = task(None), task({"grid": [2, 2]}), task({"grid": [3, 1], "overlap": 0.25})
    assert decode_side_for_tasks(1008, [plain]) == 1008
    assert decode_side_for_tasks(1008, [plain, two]) == 1815  # 1008 x (2 - 0.2)
    assert decode_side_for_tasks(1008, [two, three]) == 2520  # 1008 x (3 - 2 x 0.25)
    assert decode_side_for_tasks(None, [three]) is None


def test_an_overlap_flag_without_a_grid_is_refused(tmp_path, tiny_owlv2):
    flags = dict(input=str(tmp_path), output=str(tmp_path / "out"), task="detect",
                 family="owlv2", model=tiny_owlv2, labels=["cat"])
    with pytest.raises(SpecError, match=r"--tile-overlap .* give the grid too \(--tiles 2x2\)"):
        load_job_spec(**flags, tile_overlap=0.3)
    spec = load_job_spec(**flags, tiles=[3, 2], tile_overlap=0.3)
    assert spec.tasks[0].tiles == TilingSpec(grid=(3, 2), overlap=0.3)
    with pytest.raises(SpecError, match=r"tasks.0.tiles.grid: \[1, 1\] is the whole image"):
        load_job_spec(**flags, tiles=[1, 1])


def test_a_decode_task_of_a_tiled_job_holds_no_more_model_inputs_than_an_untiled_one(tiny_owlv2):
    from labeler.jobs.images import DECODE_BATCH, canvases_per_image

    def task(preprocess, num_gpus, tiles={"grid": [2, 2]}):
        return TaskSpec(task="detect", model={"family": "owlv2", "source": tiny_owlv2},
                        labels=["cat"], tiles=tiles, preprocess=preprocess,
                        resources={"num_gpus": num_gpus})
    assert canvases_per_image([task("fast", 1, None), task("processor", 0, None)]) == 1
    # The CPU stage makes the 5 canvases in fast mode and for CPU actors ...
    assert canvases_per_image([task("fast", 1)]) == canvases_per_image([task("processor", 0)]) == 5
    # ... and a GPU actor in processor mode gets the decoded image once and cuts it itself.
    assert canvases_per_image([task("processor", 1)]) == 1
    assert DECODE_BATCH // canvases_per_image([task("fast", 1, {"grid": [3, 3]})]) == 1
