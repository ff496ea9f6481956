"""MemoryFit: a batch that runs out of GPU memory runs in parts that fit, in order, and
later batches are cut at once; through a job's model actor (Predictor), the rows are the
same as when the batch fits."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from labeler.models.base import ImageInput
from labeler.models.fitting import MemoryFit


class _FitsUpTo:
    """An adapter's run_timed that runs out of memory above `limit` images; records the
    size of every call, checks the stacked rows it gets are its images', and times each
    image at 1 ms per stage times the size of its part (so the weighting shows)."""

    def __init__(self, limit: int):
        self.limit = limit
        self.calls: list[int] = []

    def run_timed(self, images, stacked=None, transformed=True):
        self.calls.append(len(images))
        if stacked is not None:
            assert [int(row[0, 0, 0]) for row in stacked] == [im.width for im in images]
        if len(images) > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        per_image = float(len(images))
        return ([{"width": im.width} for im in images],
                {"preprocess_ms": per_image, "predict_ms": 2 * per_image, "postprocess_ms": 0.0})


def _batch(n: int) -> tuple[list[ImageInput], np.ndarray]:
    stacked = np.zeros((n, 2, 2, 3), np.uint8)
    stacked[:, 0, 0, 0] = np.arange(n)  # row k holds k: its image's width below
    return [ImageInput(stacked[k], k, 1) for k in range(n)], stacked


def test_a_batch_that_does_not_fit_runs_in_halves_in_order(caplog):
    adapter, fit = _FitsUpTo(2), MemoryFit()
    images, stacked = _batch(7)
    with caplog.at_level(logging.WARNING, logger="labeler.models.fitting"):
        outputs, timings = fit.run_timed(adapter, images, stacked)
    assert [out["width"] for out in outputs] == list(range(7))
    assert adapter.calls == [7, 4, 2, 2, 2, 1] and fit.part == 2
    # per-image times over the parts: (2 + 2 + 2) images at 2 ms, 1 at 1 ms
    assert timings["preprocess_ms"] == pytest.approx((6 * 2 + 1) / 7)
    assert timings["predict_ms"] == pytest.approx(2 * (6 * 2 + 1) / 7)
    assert [r.getMessage() for r in caplog.records] == [
        "a batch of 7 images ran out of GPU memory; running parts of 4 from now on "
        "(a resources.batch_size of 4 would spare the failed attempt)",
        "a batch of 4 images ran out of GPU memory; running parts of 2 from now on "
        "(a resources.batch_size of 2 would spare the failed attempt)"]
    adapter.calls.clear()  # the next batch is cut at once: no failed attempt
    outputs, _ = fit.run_timed(adapter, *_batch(5))
    assert adapter.calls == [2, 2, 1] and [out["width"] for out in outputs] == list(range(5))


def test_a_batch_that_fits_is_one_call_and_an_image_that_does_not_raises():
    adapter, fit = _FitsUpTo(8), MemoryFit()
    outputs, timings = fit.run_timed(adapter, *_batch(8))
    assert adapter.calls == [8] and fit.part is None and len(outputs) == 8
    assert timings == {"preprocess_ms": 8.0, "predict_ms": 16.0, "postprocess_ms": 0.0}
    images, _ = _batch(3)  # without stacked rows, as the online API calls it
    with pytest.raises(torch.OutOfMemoryError):
        MemoryFit().run_timed(_FitsUpTo(0), images, None, transformed=False)


def _owlv2_actor_batch(tiny_owlv2: str, sizes: list[tuple[int, int]]):
    """(Predictor, its expected records, the batch) of an OWLv2 detect actor over
    synthetic images of these (w, h) sizes, as a job's decode stage hands it over."""
    from labeler.actors.predictor import Predictor
    from labeler.config import TaskSpec
    from labeler.jobs.stages import TaskTransforms, input_column
    from labeler.testing.samples import synthetic_image

    task = TaskSpec(task="detect", model={"family": "owlv2", "source": tiny_owlv2},
                    labels=["a cat", "a dog"], threshold=0.0, max_detections=5)
    pixels = [np.asarray(synthetic_image(w, h, seed)) for seed, (w, h) in enumerate(sizes)]
    transforms = TaskTransforms([task])
    column = input_column(task)
    n = len(sizes)
    batch = {"id": np.array([f"i{k}" for k in range(n)], dtype=object),
             "uri": np.array([f"file:///i{k}.jpg" for k in range(n)], dtype=object),
             "error": np.array([""] * n, dtype=object),
             "width": np.array([w for w, _ in sizes]), "height": np.array([h for _, h in sizes]),
             "decode_ms": np.zeros(n), "shard": np.zeros(n, dtype=np.int64),
             column: np.stack([transforms.apply(p)[column] for p in pixels])}
    predictor = Predictor(task, input_column=column)
    return predictor, predictor.records(batch), batch


def test_the_actor_writes_the_same_rows_when_its_batch_does_not_fit(tiny_owlv2, monkeypatch):
    predictor, expected, batch = _owlv2_actor_batch(
        tiny_owlv2, [(64, 48), (48, 64), (50, 50), (70, 40), (30, 90)])
    run_timed = predictor.adapter.run_timed
    sizes_run = []

    def small_gpu(images, stacked=None, transformed=True):
        sizes_run.append(len(images))
        if len(images) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return run_timed(images, stacked, transformed)

    monkeypatch.setattr(predictor.adapter, "run_timed", small_gpu)
    actual = predictor.records(batch)
    assert sizes_run == [5, 3, 2, 2, 1]
    assert all(r["error"] is None and r["detections"] for r in actual)
    assert [_untimed(r) for r in actual] == [_untimed(r) for r in expected]


def _untimed(record: dict) -> dict:
    return {key: value for key, value in record.items() if key != "timings"}


def test_a_row_the_model_raises_on_is_the_only_error_row(tiny_owlv2, monkeypatch):
    """A batch that raises is retried row by row: the one bad row is the only error row and
    its neighbours keep the detections they get without it (no test failed when the retry
    was broken)."""
    predictor, expected, batch = _owlv2_actor_batch(tiny_owlv2, [(64, 48), (48, 64), (50, 50)])
    run_timed = predictor.adapter.run_timed

    def poisoned(images, *args, **kwargs):  # the model raises whenever the 50x50 image is in
        if any(im.width == 50 for im in images):
            raise RuntimeError("boom")
        return run_timed(images, *args, **kwargs)

    monkeypatch.setattr(predictor.adapter, "run_timed", poisoned)
    rows = predictor.records(batch)
    assert [r["error"] for r in rows] == [None, None, "model failed: RuntimeError: boom"]
    for got, want in zip(rows[:2], expected[:2]):
        assert got["detections"] == want["detections"] and got["detections"]
