"""BLIP-2 (OPT decoder) captions and visual questions, batched.

Reference usage (transformers docs): `processor(images=image, return_tensors="pt")` ->
`model.generate(**inputs)` -> `processor.batch_decode(ids, skip_special_tokens=True)` for a
caption; the same with `text="Question: {question} Answer:"` for a question. An OPT decoder
returns the prompt ids ahead of the new ones, so the decoded text would repeat the prompt:
here the prompt ids are cut off and `text` is the continuation only, stripped.

Batching. The processor puts one image placeholder per query token first, then the tokenized
prompt (BOS first); with left padding a short prompt's pads sit between the placeholders and
its BOS, masked out. OPT numbers positions by the cumulative attention mask, so pads take no
position and every row sees the positions it has alone: the batch gives the single-image text.
A row without prompt is given the text "", whose ids (placeholders + BOS) are exactly those
`generate` builds itself when no text is given, so prompted and unprompted rows share a batch.
"""

from __future__ import annotations

import re
import warnings
from typing import Any

import numpy as np
import torch

from labeler.models.base import ImageInput
from labeler.models.generative import GenerativeAdapter

# A prompt already in the documented VQA form is passed on as it is.
_QUESTION_FORM = re.compile(r"\s*Question:.*Answer:\s*", re.IGNORECASE | re.DOTALL)


def as_question(prompt: str) -> str:
    """The documented VQA prompt: "what is this?" -> "Question: what is this? Answer:".
    A prompt that already reads "Question: ... Answer:" is returned unchanged."""
    if _QUESTION_FORM.fullmatch(prompt):
        return prompt
    return f"Question: {prompt.strip()} Answer:"


class _Blip2Generator(GenerativeAdapter):
    """Shared batching of the BLIP-2 tasks; subclasses say how a row's prompt is written."""

    model_class_name = "Blip2ForConditionalGeneration"

    def model_prompt(self, image: ImageInput) -> str | None:
        """The text given to the processor for this row; None: unprompted."""
        return self.prompt_for(image)

    def preprocess(self, images: list[ImageInput], stacked: np.ndarray | None = None) -> Any:
        """-> processor outputs on the device: pixel_values (B, 3, S, S) in the model dtype,
        input_ids and attention_mask (B, L), left padded."""
        prompts = [self.model_prompt(im) or "" for im in images]
        with warnings.catch_warnings():
            # Arrays from Ray's object store are read-only; the processor copies them.
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            inputs = self.processor(text=prompts, padding=True, return_tensors="pt",
                                    **self.processor_images(images, stacked))
        return inputs.to(self.device, self.dtype)

    def postprocess(self, raw: torch.Tensor, images: list[ImageInput]) -> list[dict]:
        """-> per image {"text": the continuation, stripped; "prompt": the prompt used}."""
        texts = self.processor.batch_decode(raw.cpu(), skip_special_tokens=True)
        return [{"text": text.strip(), "prompt": self.model_prompt(im)}
                for text, im in zip(texts, images)]


class Blip2Caption(_Blip2Generator):
    """task=caption, family=blip2. Unprompted by default (the documented captioning usage); a
    spec or row prompt such as "a photo of" is a prefix that the caption continues."""

    default_prompt = None


class Blip2Ask(_Blip2Generator):
    """task=ask, family=blip2. The prompt is a question, written as the documentation does:
    "Question: {question} Answer:" (left as it is when it already has that form)."""

    @classmethod
    def check_spec(cls, spec) -> None:
        super().check_spec(spec)
        if not (spec.prompt and spec.prompt.strip()):
            raise ValueError("BLIP-2 ask needs a question in prompt "
                             "(prompt: 'how many people are there?')")

    def model_prompt(self, image: ImageInput) -> str:
        return as_question(self.prompt_for(image))
