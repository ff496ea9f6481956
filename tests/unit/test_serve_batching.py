"""The model deployment's batch body, in-process (no Serve): a batch mixing labels,
thresholds and sizes gives each image what an adapter built for its parameters gives it."""

import numpy as np
import pytest
import torch

from labeler.config import TaskSpec
from labeler.models.base import ImageInput
from labeler.models.owlv2 import Owlv2Detector
from labeler.serve.config import ServedModel
from labeler.serve.model import Item, ModelServer
from labeler.testing.samples import synthetic_image

LABELS = ["a photo of a cat", "a dog"]
OTHER = ["car", "a red ball", "bus"]


@pytest.fixture(scope="module")
def server(tiny_owlv2):
    served = ServedModel(task="detect", model={"family": "owlv2", "source": tiny_owlv2},
                         labels=LABELS, threshold=0.2, serving={"max_batch_size": 4})
    return ModelServer(served.model_dump_json())


def _direct(model_dir, labels, threshold, pixels) -> dict:
    adapter = Owlv2Detector(TaskSpec(task="detect", model={"family": "owlv2", "source": model_dir},
                                     labels=labels, threshold=threshold))
    adapter.setup(torch.device("cpu"))
    (out,) = adapter([ImageInput(pixels, pixels.shape[1], pixels.shape[0])])
    return out


def test_mixed_parameters_in_one_batch(server, tiny_owlv2):
    params = [(None, None), (tuple(OTHER), 0.05), (None, 0.5), (tuple(OTHER), 0.05), (tuple(LABELS), None)]
    items = []
    for i, (labels, threshold) in enumerate(params):
        pixels = np.asarray(synthetic_image(40 + 17 * i, 70 - 6 * i, seed=i))
        items.append(Item(id=f"i{i}", uri="u", pixels=pixels, width=pixels.shape[1],
                          height=pixels.shape[0], decode_ms=1.0, labels=labels, threshold=threshold))
    records = server.run_batch(items)
    assert [r["id"] for r in records] == [f"i{i}" for i in range(len(items))]
    for item, record, (labels, threshold) in zip(items, records, params):
        want = _direct(tiny_owlv2, list(labels or LABELS), 0.2 if threshold is None else threshold,
                       item.pixels)
        assert record["error"] is None and record["width"] == item.width
        assert record["parameters"] == Owlv2Detector(TaskSpec(
            task="detect", model={"family": "owlv2", "source": tiny_owlv2},
            labels=list(labels or LABELS), threshold=0.2 if threshold is None else threshold)
        ).parameters_json()
        got = record["detections"]
        assert [d["label"] for d in got] == [d["label"] for d in want["detections"]]
        for a, b in zip(got, want["detections"]):
            assert a["score"] == pytest.approx(b["score"], abs=1e-5)
            assert a["x1"] == pytest.approx(b["x1"], abs=1e-3)
        assert record["timings"]["decode_ms"] == 1.0 and record["timings"]["predict_ms"] > 0
    # Variants share the loaded model; one per distinct parameter set.
    assert len(server.variants._cache) == 2
    assert all(v.model is server.base.model for v in server.variants._cache.values())


def test_one_bad_image_does_not_fail_its_batch(server):
    good = np.asarray(synthetic_image(50, 40, seed=1))
    bad = np.zeros((10, 10), np.uint8)  # no channel axis: the adapter cannot take it
    items = [Item(id=str(i), uri="u", pixels=p, width=max(p.shape[1], 1), height=max(p.shape[0], 1),
                  decode_ms=0.0) for i, p in enumerate([good, bad, good])]
    first, broken, last = server.run_batch(items)
    assert first["error"] is None and last["error"] is None
    assert [d["label"] for d in first["detections"]] == [d["label"] for d in last["detections"]]
    for a, b in zip(first["detections"], last["detections"]):
        assert a["score"] == pytest.approx(b["score"], abs=1e-5)
    assert broken["error"].startswith("model failed: ")


def test_an_input_that_did_not_decode_gets_its_error_record_without_the_model(server):
    """A video's error row reaches the deployment only for its record: the error, the
    parameters and model of the others, no detections, and its neighbours labeled."""
    good = np.asarray(synthetic_image(50, 40, seed=1))
    items = [Item(id="v", uri="u", pixels=good, width=50, height=40, decode_ms=1.0),
             Item(id="v", uri="u", pixels=np.zeros((0, 0, 3), np.uint8), width=0, height=0,
                  decode_ms=2.0, error="truncated or corrupt video: decoding stopped"),
             Item(id="v", uri="u", pixels=good, width=50, height=40, decode_ms=1.0)]
    first, failed, last = server.run_batch(items)
    assert first["error"] is None and first["detections"] == last["detections"]
    assert failed["error"] == "truncated or corrupt video: decoding stopped"
    assert failed.get("detections") is None and (failed["width"], failed["height"]) == (None, None)
    assert failed["parameters"] == first["parameters"]
    assert failed["model_revision"] == first["model_revision"]
    assert failed["timings"] == {"decode_ms": 2.0}


def test_a_new_variant_is_encoded_in_the_device_turn(server):
    """OWLv2 encodes a variant's queries on the device: while a batch holds the turn, a new
    variant waits for it, as the replica's other batch would."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    turn = server.base.device_turn
    turn.acquire()
    held = True
    try:
        with ThreadPoolExecutor(1) as pool:
            made = pool.submit(server.variants.adapter, ("a green kite",), None)
            threading.Event().wait(0.3)
            assert not made.done()
            turn.release()
            held = False
            assert made.result(timeout=30).spec.labels == ["a green kite"]
    finally:
        if held:
            turn.release()
