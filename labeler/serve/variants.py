"""Per-request parameters over one loaded model.

Requests batched together may ask for different labels or thresholds. A replica keeps one
adapter per distinct (labels, threshold), all sharing the base adapter's weights and
processor (a shallow copy with its own TaskSpec), and runs one adapter call per group of a
batch. Prompts need no variant: they travel per image as ImageInput.prompt, which every
adapter already prefers over its spec's (Adapter.prompt_for), so requests with different
prompts share one call.

Adapter.with_spec makes each variant; adapters that turn their labels into tensors at setup
(OWLv2: query embeddings) rebuild them there, once per distinct set.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from labeler.config import TaskSpec
from labeler.models.base import Adapter

# Distinct (labels, threshold) sets kept per replica. A variant costs one (Q, D) query
# tensor; 64 covers the label sets of many annotation projects hitting one server, and the
# least recently used is re-encoded (milliseconds) if it comes back.
MAX_VARIANTS = 64

ParamKey = tuple[tuple[str, ...] | None, float | None]


def variant_spec(base: TaskSpec, labels: list[str] | None, threshold: float | None,
                 prompt: str | None = None) -> TaskSpec:
    """`base` (a TaskSpec, or a ServedModel, whose `serving` is dropped) with the given
    parameters, validated like a job spec (pydantic errors, then the adapter's check_spec):
    raises pydantic.ValidationError.

    Labels of a request that the served model also has keep its queries and per-label
    thresholds; a request's threshold replaces the default threshold only."""
    updates = {"labels": labels, "threshold": threshold, "prompt": prompt}
    data = base.model_dump(exclude={"serving"})
    data.update({k: v for k, v in updates.items() if v is not None})
    if labels is not None:
        for key in ("queries", "label_thresholds"):
            data[key] = {label: value for label, value in data[key].items() if label in labels}
    return TaskSpec.model_validate(data)


class AdapterVariants:
    """adapter(labels, threshold) -> an adapter for those parameters, sharing `base`'s model."""

    def __init__(self, base: Adapter):
        self.base = base
        self._cache: OrderedDict[ParamKey, Adapter] = OrderedDict()
        self._lock = threading.Lock()  # a replica's batches run in threads, several at once

    def adapter(self, labels: tuple[str, ...] | None, threshold: float | None) -> Adapter:
        # The served parameters, given explicitly, are the base adapter's, not a variant.
        if labels is not None and list(labels) == self.base.spec.labels:
            labels = None
        if threshold is not None and threshold == self.base.spec.threshold:
            threshold = None
        if labels is None and threshold is None:
            return self.base
        key = (labels, threshold)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
            variant = self._make(labels, threshold)
            self._cache[key] = variant
            if len(self._cache) > MAX_VARIANTS:
                self._cache.popitem(last=False)
            return variant

    def _make(self, labels: tuple[str, ...] | None, threshold: float | None) -> Adapter:
        spec = variant_spec(self.base.spec, list(labels) if labels else None, threshold)
        # OWLv2 encodes the variant's queries on the device: in its turn, like any batch.
        with self.base.device_turn:
            return self.base.with_spec(spec)
