"""A model actor's batch: one row the model raises on is retried alone and becomes the only
error row; its neighbours get the detections they get without it."""

import numpy as np


def test_a_row_the_model_raises_on_is_the_only_error_row(tiny_owlv2, monkeypatch):
    from labeler.actors.predictor import Predictor
    from labeler.config import TaskSpec
    from labeler.jobs.stages import TaskTransforms, input_column
    from labeler.testing.samples import synthetic_image

    task = TaskSpec(task="detect", model={"family": "owlv2", "source": tiny_owlv2},
                    labels=["a cat", "a dog"], threshold=0.0, max_detections=5)
    sizes = [(64, 48), (48, 64), (50, 50)]
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
    expected = predictor.records(batch)

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
