"""Florence-2 adapters: detect, ground, caption, ocr and regions, one batched generate each.

Reference usage (transformers docs): `processor(text=task_token + text_input, images=image)`
-> `model.generate(input_ids, pixel_values)` -> `processor.batch_decode(ids,
skip_special_tokens=False)` -> `processor.post_process_generation(text, task=task_token,
image_size=(w, h))`. Here the same text is parsed by the pure functions of
florence2_parsing (same patterns, same pixels, plus warnings and confidences).

Prompts. A spec's or row's prompt is a task token alone (`<MORE_DETAILED_CAPTION>`), a task
token and its text (`<CAPTION_TO_PHRASE_GROUNDING>a red car`), or, for the tasks whose
token takes text (detect, ground), the text alone (the token is implied). `TASK_TOKENS`
lists the tokens of each task, its default and the parser of each token's answer.
detect: `<OD>` by default; with `labels`, `<OPEN_VOCABULARY_DETECTION>` with the labels
joined by " <and> " (the separator of the Florence-2 tokenizer's `<and>` token, as
Grounded-SAM-2 documents for several classes in one prompt) as its text: one generate
for all labels. The labels are a query, not a filter: boxes keep the label the model wrote.

Batching. Florence-2 is an encoder-decoder: the prompt (image placeholders, <s>, the task
prompt, </s>) is encoded, and every row's answer starts from the decoder start token. Prompt
ids are padded on the right, with the attention mask hiding the pads from the encoder and the
cross-attention, so each row keeps the positions it has alone: a batch gives the
single-image text.

Confidence. Generation returns each step's raw logits (`output_logits=True`); the
log-probability of a chosen token is log_softmax of its step's logits, gathered along the
beam that produced it under beam search (`beam_indices`): what
`model.compute_transition_scores(sequences, logits, beam_indices, normalize_logits=True)`
gives. Raw logits make it the model's own probability, the same whatever the decoding
options (temperature, top-p, a checkpoint's no_repeat_ngram_size reshape only the
processed scores). florence2_parsing turns them into one score per box: the geometric mean
over its location and label tokens. Boxes scoring below the spec's `threshold` are dropped
(0 keeps every box, as the documented usage does). The logits of all steps are held during
generate: max_new_tokens x batch x beams x vocabulary (51k for the released checkpoints)
float32.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from labeler.config import QUERY_ALONE
from labeler.models.base import ImageInput, ontology_parameters
from labeler.models.florence2_parsing import (
    ParseConfig,
    Parser,
    TokenSpan,
    parse_boxes_or_polygons,
    parse_grounding,
    parse_labelled_boxes,
    parse_ocr_regions,
    parse_region_proposals,
    parse_text,
)
from labeler.models.generative import GenerativeAdapter

OPEN_VOCABULARY = "<OPEN_VOCABULARY_DETECTION>"
GROUNDING = "<CAPTION_TO_PHRASE_GROUNDING>"
# The task tokens that are followed by text (transformers' task_prompts_with_input); the
# others must stand alone.
TEXT_TOKENS = frozenset({OPEN_VOCABULARY, GROUNDING})
# Labels become one open-vocabulary query: "car <and> dog" (Florence-2's `<and>` token).
LABEL_SEPARATOR = " <and> "
_TASK_TOKEN = re.compile(r"\s*(<[A-Z_]+>)(.*)", re.DOTALL)


@dataclass(frozen=True)
class TaskTokens:
    """default: the token of a prompt that names none; parsers: every token the task
    accepts -> the parser of its answer."""

    default: str
    parsers: dict[str, Parser]

    @property
    def text_token(self) -> str | None:
        """The task's token that takes text, implied by a prompt that is text alone."""
        return next((t for t in self.parsers if t in TEXT_TOKENS), None)


TASK_TOKENS: dict[str, TaskTokens] = {
    "detect": TaskTokens("<OD>", {"<OD>": parse_labelled_boxes,
                                  OPEN_VOCABULARY: parse_boxes_or_polygons}),
    "ground": TaskTokens(GROUNDING, {GROUNDING: parse_grounding}),
    "caption": TaskTokens("<CAPTION>", {"<CAPTION>": parse_text,
                                        "<DETAILED_CAPTION>": parse_text,
                                        "<MORE_DETAILED_CAPTION>": parse_text}),
    "ocr": TaskTokens("<OCR>", {"<OCR>": parse_text, "<OCR_WITH_REGION>": parse_ocr_regions}),
    "regions": TaskTokens("<DENSE_REGION_CAPTION>", {
        "<DENSE_REGION_CAPTION>": parse_labelled_boxes,
        "<REGION_PROPOSAL>": parse_region_proposals}),
}


def resolve_task_prompt(task: str, prompt: str | None, labels: Sequence[str] = ()
                        ) -> tuple[str, str]:
    """A task's prompt (None: the default) -> (task token, text input); ValueError saying
    what is wrong and what is valid."""
    table = TASK_TOKENS[task]
    valid = ", ".join(table.parsers)
    if not (prompt and prompt.strip()):
        token, text = (OPEN_VOCABULARY if task == "detect" and labels else table.default), ""
    elif match := _TASK_TOKEN.fullmatch(prompt):
        token, text = match.group(1), match.group(2).strip()
    elif table.text_token is None:
        raise ValueError(f"Florence-2 {task} takes a task token as its prompt, one of {valid}; "
                         f"got free text {prompt!r}")
    else:
        token, text = table.text_token, prompt.strip()
    if token not in table.parsers:
        raise ValueError(f"{token} is not a Florence-2 {task} task token; valid: {valid}")
    if token == OPEN_VOCABULARY and not text:
        text = LABEL_SEPARATOR.join(labels)
    if token in TEXT_TOKENS and not text:
        what = "a phrase to ground" if token == GROUNDING else "what to detect (or labels)"
        raise ValueError(f"{token} needs {what}: prompt '{token}a red car'")
    if token not in TEXT_TOKENS and text:
        raise ValueError(f"{token} takes no text after it; got {text!r}")
    return token, text


def chosen_token_logprobs(sequences: torch.Tensor, logits: Sequence[torch.Tensor],
                          beam_indices: torch.Tensor | None = None) -> torch.Tensor:
    """Log-probability of every generated token, aligned with `sequences` (B, L): 0 where no
    step chose the token (the decoder start, steps after a beam ended).

    logits: one (B * beams, V) tensor per step; beam_indices (B, steps): the row of
    each step that chose the token, -1 after the end. The same numbers as
    compute_transition_scores(normalize_logits=True), one step at a time instead of stacking
    all steps (which would copy them twice more)."""
    batch, length = sequences.shape
    if beam_indices is None:
        steps = len(logits)
        rows = torch.arange(batch, device=sequences.device)[:, None].expand(batch, steps)
    else:
        steps = int((beam_indices >= 0).sum(-1).max())
        rows = beam_indices[:, :steps]
    tokens = sequences[:, length - steps:]
    out = torch.zeros(batch, length, dtype=torch.float32, device=sequences.device)
    for t in range(steps):
        valid = rows[:, t] >= 0
        logp = torch.log_softmax(logits[t].float(), dim=-1)
        chosen = logp[rows[:, t].clamp(min=0), tokens[:, t]]
        out[:, length - steps + t] = torch.where(valid, chosen, torch.zeros_like(chosen))
    return out


def decode_with_spans(tokenizer: Any, ids: Sequence[int], added: frozenset[int]
                      ) -> tuple[str, list[tuple[int, int]]]:
    """Token ids -> (text, [start, end) of each token in the text).

    The text is what tokenizer.decode(ids, skip_special_tokens=False) gives: added tokens
    (location tokens, markers) decode to themselves, and each run of ordinary tokens between
    them is decoded as a whole (a character may take several byte-level tokens). Within a
    run, a token's span is what it adds to the decoded prefix of the run; a token that adds
    no character (the last bytes of a character begun before it) shares the prefix's last
    character."""
    singles = tokenizer.batch_decode([[i] for i in ids], skip_special_tokens=False)
    parts: list[str] = []
    spans: list[tuple[int, int]] = []
    pos, i = 0, 0
    while i < len(ids):
        j = i + 1
        if ids[i] not in added:
            while j < len(ids) and ids[j] not in added:
                j += 1
        run, run_singles = ids[i:j], singles[i:j]
        run_text = tokenizer.decode(run, skip_special_tokens=False)
        if "".join(run_singles) == run_text:
            ends = np.cumsum([len(s) for s in run_singles]).tolist()
        else:  # split characters: measure each decoded prefix
            ends = [len(tokenizer.decode(run[:k + 1], skip_special_tokens=False))
                    for k in range(len(run))]
        start = 0
        for end in ends:
            if end > start:
                spans.append((pos + start, pos + end))
                start = end
            else:
                spans.append((pos + max(start - 1, 0), pos + start))
        parts.append(run_text)
        pos += len(run_text)
        i = j
    return "".join(parts), spans


class Florence2Adapter(GenerativeAdapter):
    """Shared batching, generation and parsing of the Florence-2 tasks; a subclass names its
    task (a key of TASK_TOKENS). Output per image: the parsed fields of its task token
    (`detections`, or `text` and maybe `ocr_regions`), `warnings` when any, and `prompt`:
    the task token and text actually used."""

    model_class_name = "Florence2ForConditionalGeneration"
    # Encoder-decoder: pads after the prompt leave every row's positions as they are alone.
    padding_side = "right"
    task: ClassVar[str]

    @classmethod
    def check_spec(cls, spec) -> None:
        queries = flat_queries(spec)
        token, text = resolve_task_prompt(cls.task, spec.prompt, queries)
        if spec.labels and token != OPEN_VOCABULARY:
            raise ValueError(f"Florence-2 {cls.task} with {token} takes no labels; labels are "
                             f"the query of {OPEN_VOCABULARY} (task detect)")
        if spec.labels and text != LABEL_SEPARATOR.join(queries):
            raise ValueError(f"{OPEN_VOCABULARY} takes its query from the prompt's text or "
                             "from labels, not both")
        if spec.query_image:
            raise ValueError("Florence-2 takes no query_image")
        if spec.templates != QUERY_ALONE:
            raise ValueError("templates (prompt ensembling) average OWLv2's text embeddings; "
                             "Florence-2 reads its queries as words: give them in queries")

    def setup(self, device: torch.device) -> None:
        super().setup(device)
        if self.spec.model.compile:
            # The vision tower is 84% of Florence-2 base's FLOPs for a 30-token caption
            # (380 of 451 GFLOP, FlopCounterMode) and ran far below the GPU's matrix rate;
            # its input is one shape (the processor's 768 px), so one graph, as OWLv2's.
            # The decoding step is compiled by transformers (generation_kwargs).
            self.model.model.vision_tower.compile(dynamic=False)
        tokenizer = self.processor.tokenizer
        self.added_ids = frozenset(tokenizer.added_tokens_decoder)
        eos = self.model.generation_config.eos_token_id
        self.eos_ids = frozenset(eos if isinstance(eos, list) else [eos])
        config = self.processor.post_processor_config or {}
        self.parse_config = ParseConfig(
            banned_phrases=frozenset(self.processor.post_processor.banned_grounding_tokens),
            ocr_min_area=float(config.get("ocr", {}).get("AREA_THRESHOLD", 0.0)))

    def task_prompt(self, image: ImageInput) -> tuple[str, str]:
        """(task token, text input) of a row: its own prompt (unless blank), else the
        spec's, else the task's default."""
        own = image.prompt if image.prompt and image.prompt.strip() else None
        return resolve_task_prompt(self.task, own or self.spec.prompt, flat_queries(self.spec))

    def prompt_for(self, image: ImageInput) -> str:
        """The prompt given to the processor: task token + text input."""
        return "".join(self.task_prompt(image))

    def parameters(self) -> dict:
        return {**super().parameters(), "labels": self.spec.labels,
                "threshold": self.spec.threshold, **ontology_parameters(self.spec)}

    def preprocess(self, images: list[ImageInput], stacked: np.ndarray | None = None) -> Any:
        """-> {"inputs": processor outputs on the device: pixel_values (B, 3, S, S) in the model
        dtype, input_ids and attention_mask (B, L) right-padded; "prompts": (token, text) per
        row}. A row prompt that the task does not accept raises ValueError (a row error)."""
        prompts = [self.task_prompt(im) for im in images]
        with warnings.catch_warnings():
            # Arrays from Ray's object store are read-only; the processor copies them.
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            inputs = self.processor(text=["".join(p) for p in prompts], padding=True,
                                    return_tensors="pt",
                                    **self.processor_images(images, stacked))
        return {"inputs": inputs.to(self.device, self.dtype), "prompts": prompts}

    @torch.inference_mode()
    def predict(self, inputs: Any) -> dict[str, Any]:
        """One batched generate -> sequences (B, L) (decoder start first; rows that ended
        early padded), logprobs (B, L) of each generated token (see chosen_token_logprobs),
        both on the CPU, and the prompts."""
        out = self.generate(inputs["inputs"], output_logits=True, return_dict_in_generate=True)
        logprobs = chosen_token_logprobs(out.sequences, out.logits,
                                         getattr(out, "beam_indices", None))
        return {"sequences": out.sequences.cpu(), "logprobs": logprobs.cpu(),
                "prompts": inputs["prompts"]}

    def postprocess(self, raw: dict[str, Any], images: list[ImageInput]) -> list[dict]:
        """Decode each row up to its end token, parse it with its task token's parser (boxes
        in pixels of the original width x height), keep boxes scoring >= threshold."""
        tokenizer = self.processor.tokenizer
        label_of = query_labels(self.spec)
        results = []
        for row, (image, (token, text_input)) in enumerate(zip(images, raw["prompts"])):
            ids = raw["sequences"][row].tolist()
            # Position 0 is the decoder start (</s>): the answer ends at the next end token,
            # and whatever follows it is batch padding.
            end = next((k + 1 for k in range(1, len(ids)) if ids[k] in self.eos_ids), None)
            ids = ids[:end]
            text, spans = decode_with_spans(tokenizer, ids, self.added_ids)
            tokens = [TokenSpan(s, e, lp) for (s, e), lp in
                      zip(spans, raw["logprobs"][row][:len(ids)].tolist())]
            parser = TASK_TOKENS[self.task].parsers[token]
            parsed = parser(text, (image.width, image.height), tokens, self.parse_config)
            if parsed.detections is not None:
                parsed.detections = self._labelled(parsed.detections, label_of)
            if end is None:
                parsed.warnings.append(
                    f"the answer reached max_new_tokens={self.spec.generation.max_new_tokens} "
                    "before its end token and may be cut short")
            results.append({**parsed.fields(), "prompt": token + text_input})
        return results

    def _labelled(self, detections: list[dict], label_of: dict[str, str]) -> list[dict]:
        """Boxes named by the model's text -> the labels their queries ask for (label_of:
        casefolded query -> label; text that is no query stays as it is), kept when scoring
        >= the label's threshold."""
        kept = []
        for det in detections:
            det["label"] = label_of.get(det["label"].strip().casefold(), det["label"])
            if det["score"] >= self.spec.threshold_for(det["label"]):
                kept.append(det)
        return kept


def query_labels(spec) -> dict[str, str]:
    """{casefolded text the model may name a box with: the label it asks for}: each query,
    and each query less its non-ASCII characters, which the documented parsing drops from a
    box's phrase (`café` comes back `caf`, `猫` as ''); a stripped form two labels share is
    left out (the box keeps the phrase)."""
    label_of: dict[str, str] = {}
    for label, queries in zip(spec.labels, spec.label_queries()):
        for query in queries:
            label_of.setdefault(query.strip().casefold(), label)
    stripped: dict[str, set[str]] = {}
    for label, queries in zip(spec.labels, spec.label_queries()):
        for query in queries:
            ascii_only = query.encode("ascii", "ignore").decode("ascii").strip().casefold()
            stripped.setdefault(ascii_only, set()).add(label)
    for text, labels in stripped.items():
        if len(labels) == 1:
            label_of.setdefault(text, next(iter(labels)))
    return label_of


def flat_queries(spec) -> list[str]:
    """Every label's text queries in label order (one `<and>`-joined query text)."""
    return [query for queries in spec.label_queries() for query in queries]


class Florence2Detector(Florence2Adapter):
    """task=detect, family=florence2: `<OD>` (its own categories) or
    `<OPEN_VOCABULARY_DETECTION>` + a query (the prompt's text, else the labels)."""

    task = "detect"
    default_prompt = TASK_TOKENS["detect"].default


class Florence2Grounder(Florence2Adapter):
    """task=ground, family=florence2: `<CAPTION_TO_PHRASE_GROUNDING>` + a caption or phrase
    (required; a prompt that is text alone implies the token); boxes labelled with the
    phrases the model grounded."""

    task = "ground"
    default_prompt = None  # the phrase to ground is required


class Florence2Captioner(Florence2Adapter):
    """task=caption, family=florence2: `<CAPTION>`, `<DETAILED_CAPTION>` or
    `<MORE_DETAILED_CAPTION>` -> text."""

    task = "caption"
    default_prompt = TASK_TOKENS["caption"].default


class Florence2Ocr(Florence2Adapter):
    """task=ocr, family=florence2: `<OCR>` -> text; `<OCR_WITH_REGION>` -> text (one line
    per region) and ocr_regions."""

    task = "ocr"
    default_prompt = TASK_TOKENS["ocr"].default


class Florence2Regions(Florence2Adapter):
    """task=regions, family=florence2: `<DENSE_REGION_CAPTION>` -> detections labelled with
    their captions; `<REGION_PROPOSAL>` -> detections labelled ""."""

    task = "regions"
    default_prompt = TASK_TOKENS["regions"].default
