"""The model deployment: one per served model, wrapping the batch path's adapter.

Each replica builds the adapter exactly as a batch job's actor does
(`labeler.actors.predictor.build_adapter`: registry class, TaskSpec, setup(device)), then
answers `annotate(item)` calls, which `@serve.batch` gathers into batches of up to
`max_batch_size` (waiting at most `batch_wait_timeout_s` for a batch to fill). A batch is
split by (labels, threshold) and each group is one adapter call: model_inputs (cpu_transform
then preprocess), predict, postprocess, as in a job. A group that fails is retried image by
image, so one bad image cannot fail the requests batched with it.

The model runs in a worker thread, so the replica's event loop keeps taking requests (and
the next batch keeps filling) while a batch is on the device. An OWLv2 replica on a GPU
runs two batches at once (resources.concurrent_batches, as a job's actor does): while one
is on the device, the other is postprocessed and its records built.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import ray
from ray import serve

from labeler.actors.predictor import build_adapter
from labeler.models.base import Adapter, Example, ExampleImage, ImageInput
from labeler.models.fitting import MemoryFit
from labeler.serve.config import ServedModel
from labeler.serve.variants import AdapterVariants
from labeler.schemas import as_stored

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Item:
    """One request for one model. pixels: (h, w, 3) uint8 RGB as decoded; width/height:
    the full oriented size; labels/threshold: None keeps the served spec's; prompt: this
    request's prompt or queries, None keeps the spec's; caption: the image's caption
    (pseudo-label builds its queries from it); error: set for an input that did not decode
    (a video's error row): the model is not run, the record carries the error, as a batch
    job's row does; examples: boxes drawn in the image, or in example_image
    (detect-by-example), recorded in the record's parameters. A video's frames share one
    example image: its pixels travel as an object-store reference (see resolved)."""

    id: str
    uri: str
    pixels: np.ndarray
    width: int
    height: int
    decode_ms: float
    prompt: str | None = None
    labels: tuple[str, ...] | None = None
    threshold: float | None = None
    caption: str | None = None
    error: str | None = None
    examples: tuple[Example, ...] = ()
    example_image: ExampleImage | None = None


def resolved(image: ExampleImage | None) -> ExampleImage | None:
    """`image` with its pixels in hand: a video request's frames carry a ray.ObjectRef to
    them (one copy in the object store; getting it maps it, no copy) instead of the array."""
    if image is None or isinstance(image.pixels, np.ndarray):
        return image
    return dataclasses.replace(image, pixels=ray.get(image.pixels))


class ModelServer:
    """Serve deployment body. served_json: a ServedModel as JSON (picklable, validated again
    here so the replica runs exactly what the config said)."""

    def __init__(self, served_json: str):
        served = ServedModel.model_validate_json(served_json)
        self.served = served
        self.task = served.task_spec()
        self.base = build_adapter(self.task)
        self.variants = AdapterVariants(self.base)
        self.fit = MemoryFit()  # batches that run out of GPU memory run in parts
        # serve.batch fixes max_concurrent_batches when it wraps a function, so the batch
        # handler is wrapped here, per replica: up to batches_at_once batches run
        # at once, in threads, one at a time on the device (Adapter.device_turn).
        self.annotate_batch = serve.batch(
            max_batch_size=served.serving.max_batch_size,
            batch_wait_timeout_s=served.serving.batch_wait_timeout_s,
            max_concurrent_batches=served.batches_at_once)(self._batch_in_thread)

    async def ready(self) -> dict:
        """Answered once __init__ (model load) is done: what this replica serves."""
        return {"name": self.served.served_name, "revision": self.base.revision,
                "device": str(self.base.device)}

    async def annotate(self, item: Item) -> dict:
        """One item -> its record (labeler.schemas.Record fields)."""
        return await self.annotate_batch(item)

    async def _batch_in_thread(self, items: list[Item]) -> list[dict]:
        """A batch gathered by annotate_batch (serve.batch), run in a worker thread."""
        return await asyncio.to_thread(self.run_batch, items)

    def run_batch(self, items: list[Item]) -> list[dict]:
        """Items in arrival order -> records in the same order, one adapter call per
        parameter group."""
        groups: dict[tuple, list[int]] = defaultdict(list)
        for i, item in enumerate(items):
            groups[(item.labels, item.threshold)].append(i)
        records: list[dict | None] = [None] * len(items)
        for (labels, threshold), indices in groups.items():
            adapter = self.variants.adapter(labels, threshold)
            group = [items[i] for i in indices]
            for i, record in zip(indices, self._run_group(adapter, group)):
                records[i] = record
        return records

    def _run_group(self, adapter: Adapter, items: list[Item]) -> list[dict]:
        if any(it.error is not None for it in items):
            # Error items are rare (a video's damaged end): their records, then the others'.
            good = [it for it in items if it.error is None]
            done = iter(self._run_group(adapter, good) if good else [])
            return [self._record(adapter, it, {}, it.error, {}) if it.error is not None
                    else next(done) for it in items]
        images = [ImageInput(it.pixels, it.width, it.height, prompt=it.prompt,
                             caption=it.caption, examples=it.examples,
                             example_image=resolved(it.example_image)) for it in items]
        try:
            outputs, timings = self.fit.run_timed(adapter, images, transformed=False)
            return [self._record(adapter, it, out, None, timings) for it, out in zip(items, outputs)]
        except Exception:  # noqa: BLE001 - isolate the failing image(s) below
            log.warning("batch of %d failed; retrying image by image", len(items), exc_info=True)
        records = []
        for item, image in zip(items, images):
            try:
                (out,), timings = adapter.run_timed([image], transformed=False)
                records.append(self._record(adapter, item, out, None, timings))
            except Exception as err:  # noqa: BLE001 - becomes this request's error
                records.append(self._record(adapter, item, {}, f"model failed: "
                                            f"{type(err).__name__}: {err}", {}))
        return records

    def _record(self, adapter: Adapter, item: Item, result: dict, error: str | None,
                timings: dict) -> dict:
        """The record a batch job would write for this image (same fields, same values:
        boxes in float32, as_stored)."""
        spec = adapter.spec
        parameters = adapter.parameters_json(  # with this request's queries, if it drew them
            item.examples, item.example_image.key if item.example_image is not None else None)
        return as_stored({
            "id": item.id, "uri": item.uri, "width": item.width or None,
            "height": item.height or None,
            "task": spec.task, "task_name": spec.output_name,
            "model": spec.model.source, "model_family": spec.model.family,
            "model_revision": adapter.revision, "parameters": parameters,
            **result, "error": error,
            "timings": {"decode_ms": item.decode_ms, **timings},
        })
