"""Shared machinery of the generative families (Florence-2, BLIP-2, Qwen2-VL, Ovis2).

A family module subclasses GenerativeAdapter, names its transformers model class, and
writes `preprocess` (processor call for a batch of images and prompts), `predict` (usually
`self.generate(inputs)`) and `postprocess` (decode + parse into record fields).

Batching rules: decoder-only models (BLIP-2's OPT, Qwen2-VL, Ovis2) pad prompts on the left
so that every row's last prompt token sits at the end and generation continues from it;
Florence-2 is encoder-decoder and pads on the right. Greedy by default.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch

from labeler.models.base import Adapter, ImageInput, channels_first, resolve_dtype
from labeler.storage import resolve_model_source


class GenerativeAdapter(Adapter):
    """Base of adapters whose model generates text."""

    #: transformers class that loads the checkpoint, e.g. "Florence2ForConditionalGeneration".
    model_class_name: ClassVar[str]
    #: tokenizer padding side for batched prompts; None leaves the checkpoint's setting.
    padding_side: ClassVar[str | None] = "left"

    @classmethod
    def check_spec(cls, spec) -> None:
        """Generative tasks take a prompt; fields for detectors would be silently ignored."""
        if spec.labels:
            raise ValueError(f"task {spec.task!r} of {spec.model.family} takes a prompt, not labels")
        if spec.query_image:
            raise ValueError(f"task {spec.task!r} of {spec.model.family} takes no query_image")

    def setup(self, device: torch.device) -> None:
        import transformers

        source = resolve_model_source(self.spec.model.source)
        kwargs = {"revision": self.spec.model.revision} if self.spec.model.revision else {}
        self.device = device
        self.dtype = resolve_dtype(self.spec.model.dtype, device)
        self.processor = transformers.AutoProcessor.from_pretrained(source, **kwargs)
        tokenizer = getattr(self.processor, "tokenizer", None)
        if tokenizer is not None and self.padding_side:
            tokenizer.padding_side = self.padding_side
        model_class = getattr(transformers, self.model_class_name)
        self.model = model_class.from_pretrained(source, dtype=self.dtype, **kwargs)
        self.model.to(device).eval()
        self.revision = getattr(self.model.config, "_commit_hash", None) or self.revision

    def processor_images(self, images: list[ImageInput],
                         stacked: np.ndarray | None = None) -> dict[str, Any]:
        """The processor's image keyword arguments for a batch of (h, w, 3) uint8 pixels.

        A model on CPU gets the arrays, channels last, as the documented usage passes them.
        A GPU actor's (resources.num_gpus > 0) are uint8 tensors on its device, channels
        first, with the processor's `device`: the image processor (transformers' torch one)
        resizes and normalises them there. On the actor's CPU that took 9 ms an image for
        Florence-2 at 768 px (an H200 host's core, in the batch-64 sweep of
        benchmarks/gpu_throughput.py), more than the model's 5.8, and 8 ms for Qwen2-VL at
        448 px (one core of the development machine). The processor runs the same operations
        on either device (tests/models/test_device_preprocess.py). `stacked` (B, h, w, 3)
        crosses in one copy.
        """
        if self.model_on_cpu:
            return {"images": [im.pixels for im in images], "input_data_format": "channels_last"}
        if stacked is not None:
            pixels = channels_first(stacked).to(self.device)
        else:
            pixels = [channels_first(im.pixels).to(self.device) for im in images]
        return {"images": pixels, "input_data_format": "channels_first", "device": self.device}

    def generation_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `model.generate` from the spec's generation options."""
        g = self.spec.generation
        kwargs: dict[str, Any] = {"max_new_tokens": g.max_new_tokens, "num_beams": g.num_beams,
                                  "do_sample": g.do_sample}
        if g.do_sample:
            kwargs.update(temperature=g.temperature, top_p=g.top_p, top_k=g.top_k)
        if self.spec.model.compile:
            # transformers' recipe: with a static cache, generate compiles the decoding step
            # on a GPU (its CompileConfig: CUDA graphs), once per cache shape, i.e. per
            # prompt length; on CPU the cache alone, uncompiled.
            kwargs["cache_implementation"] = "static"
        return kwargs

    @property
    def seeded_sampling(self) -> bool:
        """Sampling with a fixed seed: rows then run one at a time (run_timed)."""
        g = self.spec.generation
        return g.do_sample and g.seed is not None

    def run_timed(self, images: list[ImageInput], stacked: np.ndarray | None = None,
                  transformed: bool = True) -> tuple[list[dict], dict[str, float]]:
        """As Adapter.run_timed. With sampling and a seed, image by image, the generator
        seeded for each: a row's text then depends on its image and prompt alone, not on
        the rows batched with it (a job's batch, a server's dynamic batch), so a fixed seed
        gives the same text in a job and over HTTP whatever else is in flight (seeded once
        per batch, the same image got other text beside another request)."""
        if not self.seeded_sampling or len(images) < 2:
            return super().run_timed(images, stacked, transformed)
        outputs, totals = [], {}
        for image in images:
            (out,), timings = super().run_timed([image], None, transformed)
            outputs.append(out)
            for key, value in timings.items():
                totals[key] = totals.get(key, 0.0) + value / len(images)
        return outputs, totals

    def __call__(self, images: list[ImageInput]) -> list[dict]:
        if not self.seeded_sampling or len(images) < 2:
            return super().__call__(images)
        return [super(GenerativeAdapter, self).__call__([image])[0] for image in images]

    @torch.inference_mode()
    def generate(self, inputs: dict[str, Any], **extra: Any) -> Any:
        """model.generate on a prepared batch. With sampling and a seed, the generator is
        seeded first (a batch of one image, see run_timed)."""
        g = self.spec.generation
        if g.do_sample and g.seed is not None:
            torch.manual_seed(g.seed)
        return self.model.generate(**inputs, **self.generation_kwargs(), **extra)

    @torch.inference_mode()
    def predict(self, inputs: Any) -> torch.Tensor:
        """One batched generate -> the new token ids (B, T): the prompt, left padded to a
        common length, is cut off; rows that stopped early are padded with the pad id."""
        generated = self.generate(inputs)
        return generated[:, inputs["input_ids"].shape[1]:]

    def parameters(self) -> dict:
        return {"prompt": self.spec.prompt, "generation": self.spec.generation.model_dump()}
