"""Adapter.device_turn: several threads may run one adapter (an actor with
resources.concurrent_batches > 1, a Serve replica); one batch at a time preprocesses and
predicts, and a batch's postprocess runs outside that turn, so it overlaps the next batch's
model time. Through a job's actor, batches run at once give the rows they give one by one."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from labeler.config import ResourceSpec, TaskSpec
from labeler.models.base import Adapter, ImageInput

WAIT_S = 10.0  # far longer than anything here takes; reached only when the turn is wrong


class _Recording(Adapter):
    """An adapter whose stages record which batches are inside the device turn at once; the
    batch tagged `hold` waits in postprocess until `release` is set."""

    def __init__(self):
        super().__init__(TaskSpec(task="caption", model={"family": "florence2", "source": "m"}))
        self.inside = 0
        self.most_inside = 0
        self.count_lock = threading.Lock()
        self.holding = threading.Event()  # the `hold` batch reached postprocess
        self.release = threading.Event()

    def setup(self, device):
        self.device = device

    def preprocess(self, images, stacked=None):
        with self.count_lock:
            self.inside += 1
            self.most_inside = max(self.most_inside, self.inside)
        return [im.prompt for im in images]

    def predict(self, inputs):
        threading.Event().wait(0.002)  # a model's time: lets another thread try its turn
        with self.count_lock:
            self.inside -= 1
        return [f"out {tag}" for tag in inputs]

    def postprocess(self, raw, images):
        if any(im.prompt == "hold" for im in images):
            self.holding.set()
            assert self.release.wait(2 * WAIT_S), "never released"
        return [{"text": text} for text in raw]


def _images(tag: str, n: int = 2) -> list[ImageInput]:
    return [ImageInput(np.zeros((2, 2, 3), np.uint8), 2, 2, prompt=tag) for _ in range(n)]


def test_a_batch_in_postprocess_lets_the_next_one_predict():
    adapter = _Recording()
    with ThreadPoolExecutor(2) as pool:
        try:
            held = pool.submit(adapter.run_timed, _images("hold"))
            assert adapter.holding.wait(WAIT_S)
            # The first batch waits in postprocess: the second must get the device meanwhile
            # (were postprocess inside the turn, it would wait for the release, never given).
            second = pool.submit(adapter.run_timed, _images("next"))
            assert [r["text"] for r in second.result(WAIT_S)[0]] == ["out next"] * 2
            assert not held.done()
        finally:
            adapter.release.set()
        outputs, timings = held.result(WAIT_S)
    assert [r["text"] for r in outputs] == ["out hold"] * 2
    assert set(timings) == {"preprocess_ms", "predict_ms", "postprocess_ms"}


def test_one_batch_at_a_time_preprocesses_and_predicts():
    adapter = _Recording()
    adapter.release.set()
    tags = [f"b{k}" for k in range(24)]
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda tag: adapter.run_timed(_images(tag, 3))[0], tags))
    assert adapter.most_inside == 1
    assert results == [[{"text": f"out {tag}"}] * 3 for tag in tags]
    # __call__ (no timings) takes the same turn
    with ThreadPoolExecutor(4) as pool:
        called = list(pool.map(lambda tag: adapter(_images(tag)), tags))
    assert adapter.most_inside == 1 and called[5] == [{"text": "out b5"}] * 2


def test_variants_of_one_model_share_its_turn():
    adapter = _Recording()
    variant = adapter.with_spec(adapter.spec.model_copy(update={"prompt": "other"}))
    assert variant.device_turn is adapter.device_turn


@pytest.mark.parametrize(("family", "num_gpus", "given", "expected"), [
    ("owlv2", 0, None, 1), ("owlv2", 1, None, 2), ("owlv2", 0.5, None, 2), ("owlv2", 1, 1, 1),
    ("owlv2", 0, 3, 3),
    # generate loops run one batch at a time by default, on a GPU too, unless asked
    ("florence2", 1, None, 1), ("qwen2_vl", 1, None, 1), ("blip2", 1, None, 1),
    ("ovis2", 1, None, 1), ("florence2", 1, 2, 2)])
def test_batches_at_once_default_to_two_for_owlv2_with_a_gpu(family, num_gpus, given, expected):
    task = TaskSpec(task="caption" if family != "owlv2" else "detect",
                    model={"family": family, "source": "m"},
                    labels=["cat"] if family == "owlv2" else [],
                    resources={"num_gpus": num_gpus, "concurrent_batches": given})
    assert task.batches_at_once == expected


def test_the_actor_pool_runs_that_many_batches_at_once():
    from labeler.jobs.runner import _actor_pool

    threaded = _actor_pool(ResourceSpec(num_gpus=1), 2)
    assert (threaded.max_concurrent_calls_per_actor, threaded.enable_true_multi_threading) == (
        2, True)
    single = _actor_pool(ResourceSpec(num_gpus=1), 1)
    assert (single.max_concurrent_calls_per_actor, single.enable_true_multi_threading) == (
        None, False)
    # Relabeling lost rows: an actor holds one batch, whatever concurrent_batches says.
    lost = _actor_pool(ResourceSpec(num_gpus=1, concurrent_batches=4), 4, one_task_per_actor=True)
    assert (lost.max_tasks_in_flight_per_actor, lost.max_concurrent_calls_per_actor) == (1, None)


def test_a_dry_run_says_how_many_batches_an_actor_runs_at_once():
    from labeler.jobs.runner import _task_line

    def line(**resources):
        return _task_line(TaskSpec(task="detect", model={"family": "owlv2", "source": "m"},
                                   labels=["cat"], resources=resources))

    assert line(num_gpus=1, batch_size=64).endswith(
        "batch 64 (2 at once), 1 actor(s) x 1 CPU 1 GPU")
    assert line(batch_size=8).endswith("batch 8, 1 actor(s) x 1 CPU 0 GPU")


def test_the_actor_writes_the_same_rows_for_batches_run_at_once(tiny_owlv2):
    """Predictor (a job's model actor) called from two threads at once, as Ray Data calls a
    threaded actor: each batch's records are those it gets alone (a real OWLv2 adapter,
    whose text-embedding cache the batches share)."""
    from labeler.actors.predictor import Predictor
    from labeler.jobs.stages import TaskTransforms, input_column
    from labeler.testing.samples import synthetic_image

    task = TaskSpec(task="detect", model={"family": "owlv2", "source": tiny_owlv2},
                    labels=["a cat", "a dog"], threshold=0.0, max_detections=5,
                    resources={"concurrent_batches": 2})
    transforms, column = TaskTransforms([task]), input_column(task)

    def batch(seed: int, n: int) -> dict:
        pixels = [np.asarray(synthetic_image(64, 48, seed + k)) for k in range(n)]
        return {"id": np.array([f"s{seed}-{k}" for k in range(n)], dtype=object),
                "uri": np.array([f"file:///s{seed}-{k}.jpg" for k in range(n)], dtype=object),
                "error": np.array([""] * n, dtype=object), "width": np.full(n, 64),
                "height": np.full(n, 48), "decode_ms": np.zeros(n),
                "shard": np.zeros(n, dtype=np.int64),
                column: np.stack([transforms.apply(p)[column] for p in pixels])}

    batches = [batch(10 * k, 3) for k in range(6)]
    predictor = Predictor(task, input_column=column)
    alone = [[_untimed(r) for r in predictor.records(b)] for b in batches]
    fresh = Predictor(task, input_column=column)  # its text cache starts empty, as shared
    with ThreadPoolExecutor(2) as pool:
        together = list(pool.map(lambda b: [_untimed(r) for r in fresh.records(b)], batches))
    assert together == alone
    assert all(r["error"] is None and r["detections"] for rows in together for r in rows)


def _untimed(record: dict) -> dict:
    return {key: value for key, value in record.items() if key != "timings"}
