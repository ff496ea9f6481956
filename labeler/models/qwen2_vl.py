"""Qwen2-VL: captions, OCR, free questions and grounding with boxes.

Reference usage (transformers docs), which preprocess / predict / postprocess follow for a
batch: messages [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text":
prompt}]}] -> processor.apply_chat_template(messages, add_generation_prompt=True,
tokenize=False) -> processor(text=[...], images=[...], padding=True, return_tensors="pt") ->
model.generate -> generated ids trimmed of the prompt -> processor.batch_decode(...,
skip_special_tokens=True, clean_up_tokenization_spaces=False).

Batching: prompts are padded on the left, so each row's prompt ends in the last column and
generation continues from it; trimming the padded prompt length trims every row. Greedy
output equals the single-image output because the attention mask travels into generate:
the padded positions are masked, and Qwen2-VL's multimodal rope (`get_rope_index`) counts
positions over the unmasked tokens only, with per-row offsets (rope deltas) for the decoding
steps, so a padded row sees the same positions as the row alone.

Images keep their own size: the processor resizes each to a multiple of 28 pixels between
its min_pixels and max_pixels (dynamic resolution) and packs the patches of the batch into
one sequence; image_grid_thw tells the model which patches belong to which image.

Grounding boxes are written on a 0-1000 grid relative to the image (Qwen2-VL's convention,
independent of the dynamic resize), so they map to pixels with the original width and
height (see qwen2_vl_parsing). Each box's score is the geometric mean of the model's
probabilities of the tokens that wrote it: <|box_start|>, the coordinate tokens and
<|box_end|>. The probabilities come from the raw logits of each step (softmax over the
vocabulary, before repetition penalty, temperature or top-p), so they do not change with the
decoding settings; with beam search they follow the chosen beam.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch

from labeler.models.base import ImageInput
from labeler.models.generative import GenerativeAdapter
from labeler.models.qwen2_vl_parsing import GROUNDING_TOKENS, parse_grounding, span_confidence


class Qwen2VLGenerator(GenerativeAdapter):
    """A prompted Qwen2-VL task whose output is the generated text.

    Output per image: {"text": answer, "prompt": the prompt used}. The clip tasks
    (qwen2_vl_video) set `media` to "video" and pass clips in `vision_inputs`.
    """

    model_class_name = "Qwen2VLForConditionalGeneration"
    padding_side = "left"
    task_name: ClassVar[str]
    #: the chat content type of the picture in the user turn: "image", or "video" for clips.
    media: ClassVar[str] = "image"

    @classmethod
    def check_spec(cls, spec) -> None:
        if spec.labels:
            raise ValueError(f"Qwen2-VL {cls.task_name} takes a prompt, not labels; put what "
                             f"to look for in the prompt")
        if spec.query_image:
            raise ValueError(f"Qwen2-VL {cls.task_name} takes no query_image")
        if spec.prompt is not None and not spec.prompt.strip():
            hint = (f"; leave it out to use the default ({cls.default_prompt!r})"
                    if cls.default_prompt else "")
            raise ValueError(f"Qwen2-VL {cls.task_name}: the prompt is empty{hint}")

    # Qwen2-VL's processor (smart_resize) raises for a longer side over 200x the shorter.
    MAX_ASPECT_RATIO = 200

    @classmethod
    def input_refusal(cls, spec, width: int, height: int, max_pixels: int) -> str | None:
        if max(width, height) <= cls.MAX_ASPECT_RATIO * min(width, height):
            return None
        return (f"Qwen2-VL takes images whose long side is at most {cls.MAX_ASPECT_RATIO} "
                f"times the short one; {width}x{height} is "
                f"{max(width, height) / min(width, height):g} times")

    def setup(self, device: torch.device) -> None:
        # Imported here: it imports transformers' Qwen2-VL modelling (2.5 s), which checking
        # a spec does not need.
        from labeler.models.qwen2_vl_attention import batch_vision_attention

        super().setup(device)
        # One attention call a layer for equal-size images, not one per image
        # (qwen2_vl_attention); the same numbers.
        batch_vision_attention(self.model.model.visual)

    def chat_text(self, prompt: str) -> str:
        """One user turn of the picture (an image, or a video for clip tasks) and the prompt,
        through the checkpoint's chat template, ending with the assistant's turn opened."""
        messages = [{"role": "user", "content": [{"type": self.media},
                                                 {"type": "text", "text": prompt}]}]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True,
                                                  tokenize=False)

    def vision_inputs(self, images: list[ImageInput],
                      stacked: np.ndarray | None = None) -> dict[str, Any]:
        """The processor's keyword arguments for the batch's pictures (processor_images)."""
        return self.processor_images(images, stacked)

    def preprocess(self, images: list[ImageInput], stacked: np.ndarray | None = None) -> Any:
        """Images (clips) and their prompts -> one left-padded batch on the device: input_ids
        and attention_mask (B, T), pixel_values (pixel_values_videos): (sum of patches over the
        batch, C*2*14*14), image_grid_thw (video_grid_thw): (B, 3)."""
        texts = [self.chat_text(self.prompt_for(im)) for im in images]
        inputs = self.processor(text=texts, **self.vision_inputs(images, stacked), padding=True,
                                return_tensors="pt")
        return inputs.to(self.device)

    @torch.inference_mode()
    def predict(self, inputs: Any) -> torch.Tensor:
        """One batched generate -> generated ids (B, L), the prompt trimmed; rows that ended
        early are padded with the pad token."""
        prompt_length = inputs["input_ids"].shape[1]
        return self.generate(inputs)[:, prompt_length:]

    def postprocess(self, raw: torch.Tensor, images: list[ImageInput]) -> list[dict]:
        texts = self.processor.batch_decode(raw.cpu(), skip_special_tokens=True,
                                            clean_up_tokenization_spaces=False)
        return [{"text": text, "prompt": self.prompt_for(im)} for text, im in zip(texts, images)]


class Qwen2VLCaption(Qwen2VLGenerator):
    """task=caption, family=qwen2_vl."""

    task_name = "caption"
    default_prompt = "Describe this image in one sentence."


class Qwen2VLOcr(Qwen2VLGenerator):
    """task=ocr, family=qwen2_vl. Text only (no regions), lines as the model writes them."""

    task_name = "ocr"
    default_prompt = "Read all the text in the image and write it out exactly, line by line."


class Qwen2VLAsk(Qwen2VLGenerator):
    """task=ask, family=qwen2_vl: a free question or instruction about each image.

    The spec must give the prompt (the job's question); a row's own prompt replaces it. The
    spec prompt is required, rather than only per-row prompts, so that every row has a
    question whatever its source, and a missing one is caught before Ray starts.
    """

    task_name = "ask"

    @classmethod
    def check_spec(cls, spec) -> None:
        super().check_spec(spec)
        if spec.prompt is None:
            raise ValueError("task 'ask' needs a prompt: the question to ask about each image "
                             "(prompt: 'How many people are in the picture?'); a row's own "
                             "prompt replaces it")


class Qwen2VLGrounder(Qwen2VLGenerator):
    """task=ground, family=qwen2_vl: the prompt names what to find; boxes from box tokens.

    Output per image: {"detections": [{label, score, x0, y0, x1, y1}] in the order the model
    wrote them, score >= the spec's threshold; "text": the answer with the box/ref tokens
    kept and other special tokens removed; "prompt"; "warnings" when the answer had
    malformed boxes}.
    """

    task_name = "ground"
    default_prompt = "Detect all objects in the image and output their bounding boxes."

    def setup(self, device: torch.device) -> None:
        super().setup(device)
        tokenizer = self.processor.tokenizer
        missing = [t for t in GROUNDING_TOKENS if t not in tokenizer.get_vocab()]
        if missing:
            raise ValueError(f"tokenizer of {self.spec.model.source} lacks {missing}; it "
                             f"cannot write grounding boxes")
        self.kept_ids = set(tokenizer.convert_tokens_to_ids(list(GROUNDING_TOKENS)))
        self.special_ids = set(tokenizer.all_special_ids)

    @torch.inference_mode()
    def predict(self, inputs: Any) -> dict[str, torch.Tensor]:
        """One batched generate -> ids (B, L) as for text tasks, and logprobs (B, L): the
        natural-log probability of each generated token under the model's raw logits.

        generate keeps every step's logits until it returns: B x L x vocabulary float32, e.g.
        8 x 128 x 151,646 x 4 bytes ~ 620 MB with the real vocabulary; only (B, L) is kept.
        """
        prompt_length = inputs["input_ids"].shape[1]
        out = self.generate(inputs, return_dict_in_generate=True, output_logits=True)
        logprobs = self.model.compute_transition_scores(
            out.sequences, out.logits, getattr(out, "beam_indices", None), normalize_logits=True)
        ids = out.sequences[:, prompt_length:]
        return {"ids": ids, "logprobs": logprobs[:, :ids.shape[1]]}

    def postprocess(self, raw: dict[str, torch.Tensor], images: list[ImageInput]) -> list[dict]:
        results = []
        for ids, logprobs, im in zip(raw["ids"].cpu().tolist(),
                                     raw["logprobs"].float().cpu().tolist(), images):
            text, spans = self.decode_with_spans(ids)
            boxes, notes = parse_grounding(text, im.width, im.height)
            detections = []
            for box in boxes:
                score = span_confidence(spans, logprobs, box.start, box.end)
                if score >= self.spec.threshold:
                    detections.append({"label": box.label, "score": score, "x0": box.x0,
                                       "y0": box.y0, "x1": box.x1, "y1": box.y1})
            result = {"detections": detections, "text": text, "prompt": self.prompt_for(im)}
            if notes:
                result["warnings"] = notes
            results.append(result)
        return results

    def decode_with_spans(self, ids: list[int]) -> tuple[str, list[tuple[int, int]]]:
        """Generated ids -> (text, per-token [begin, end) character span in it).

        The text is what batch_decode(skip_special_tokens=False) gives with every special
        token but the box/ref ones removed (end of turn, padding). Runs of ordinary tokens
        are decoded together (a character may take several byte-level tokens), so every
        token of a run gets the whole run's span; special tokens split the runs, so the
        tokens between <|box_start|> and <|box_end|> form one run.
        """
        pieces: list[str] = []
        spans: list[tuple[int, int]] = []
        length, run = 0, []

        def flush() -> None:
            nonlocal length
            if run:
                piece = self.processor.tokenizer.decode(run, clean_up_tokenization_spaces=False)
                pieces.append(piece)
                spans.extend([(length, length + len(piece))] * len(run))
                length += len(piece)
                run.clear()

        for token_id in ids:
            if token_id not in self.special_ids:
                run.append(token_id)
                continue
            flush()
            piece = (self.processor.tokenizer.convert_ids_to_tokens(token_id)
                     if token_id in self.kept_ids else "")
            pieces.append(piece)
            spans.append((length, length + len(piece)))
            length += len(piece)
        flush()
        return "".join(pieces), spans

    def parameters(self) -> dict:
        return {**super().parameters(), "threshold": self.spec.threshold}
