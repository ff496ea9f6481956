"""Ovis2 captions, OCR and visual questions, batched.

Reference usage (transformers docs): messages = [{"role": "user", "content": [{"type":
"image"}, {"type": "text", "text": prompt}]}] -> `processor.apply_chat_template(messages,
add_generation_prompt=True)` -> `processor(text=..., images=..., padding=True,
return_tensors="pt")` -> `model.generate(**inputs)` -> the prompt ids cut off ->
`processor.batch_decode(ids, skip_special_tokens=True)`. `text` is that decoded answer,
stripped.

Batching. The image processor cuts each image into its own number of tiles (plus a
thumbnail); pixel_values holds every image's tiles one after the other and each row's
prompt holds as many visual placeholders as its image has tiles, so the model scatters the
tile features back into the right rows in order. Rows differ in length, so prompts are padded
on the left (set in GenerativeAdapter.setup), masked out; Qwen2's position ids come from the
cumulative attention mask in `generate`, so every row sees the positions it has alone and the
batch gives the single-image text.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

from labeler.models.base import ImageInput
from labeler.models.generative import GenerativeAdapter


def chat_messages(prompt: str) -> list[dict]:
    """One user turn: the image, then the prompt (the documented message layout)."""
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]


class _Ovis2Generator(GenerativeAdapter):
    """Shared batching of the Ovis2 tasks; subclasses give the default prompt and checks."""

    model_class_name = "Ovis2ForConditionalGeneration"

    def preprocess(self, images: list[ImageInput], stacked: np.ndarray | None = None) -> Any:
        """-> processor outputs on the device: pixel_values (tiles, 3, T, T) in the model
        dtype, every image's tiles in row order; input_ids and attention_mask (B, L), left
        padded."""
        texts = [self.processor.apply_chat_template(
                     chat_messages(self.prompt_for(im)), add_generation_prompt=True)
                 for im in images]
        with warnings.catch_warnings():
            # Arrays from Ray's object store are read-only; the processor copies them.
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            inputs = self.processor(text=texts, padding=True, return_tensors="pt",
                                    **self.processor_images(images, stacked))
        return inputs.to(self.device, self.dtype)

    def postprocess(self, raw: torch.Tensor, images: list[ImageInput]) -> list[dict]:
        """-> per image {"text": the decoded answer, stripped; "prompt": the prompt used}."""
        texts = self.processor.batch_decode(raw.cpu(), skip_special_tokens=True)
        return [{"text": text.strip(), "prompt": self.prompt_for(im)}
                for text, im in zip(texts, images)]


class Ovis2Caption(_Ovis2Generator):
    """task=caption, family=ovis2. Prompted; the default is the documentation's example."""

    default_prompt = "Describe the image."


class Ovis2Ocr(_Ovis2Generator):
    """task=ocr, family=ovis2. Prompted; the text comes back as the model writes it (no
    regions: Ovis2 gives no locations)."""

    default_prompt = "Read all the text in the image. Answer with the text only."


class Ovis2Ask(_Ovis2Generator):
    """task=ask, family=ovis2. The prompt is the question, sent as the user's turn."""

    @classmethod
    def check_spec(cls, spec) -> None:
        super().check_spec(spec)
        if not (spec.prompt and spec.prompt.strip()):
            raise ValueError("Ovis2 ask needs a question in prompt "
                             "(prompt: 'what is the man holding?')")
