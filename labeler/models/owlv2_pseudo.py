"""OWLv2 pseudo-annotation as in OWL-ST (task pseudo-label): boxes for each image from the
queries its caption gives, and/or a curated vocabulary, then image-level filtering.

Reference usage (transformers docs), one image at a time, which the tests compare with:
processor(text=[queries], images=image) -> model(**inputs) -> logits, pred_boxes,
objectness_logits; with several prompt templates, a query's embedding is the mean of the
L2-normalised get_text_features of each template filled with it, scored by
model.class_predictor. The rules applied to those numbers are this module's (see
Owlv2PseudoLabeler); boxes go through the padded square as in labeler.models.owlv2.
"""

from __future__ import annotations

import logging
from collections import OrderedDict

import numpy as np
import torch

from labeler.models import owlv2
from labeler.models.base import ImageInput
from labeler.models.owlv2 import _Owlv2Adapter, pixel_corners, ranked_detections
from labeler.pseudo.filtering import (
    image_verdict,
    no_queries_reason,
    truncation_warning,
)
from labeler.pseudo.queries import (
    GENERIC_WORDS_FILE,
    STOP_WORDS_FILE,
    caption_queries,
    read_word_list,
    shipped_word_list,
)
from labeler.pseudo.vocabulary import Vocabulary, clean_names, load_vocabulary, read_names
from labeler.storage import is_s3

log = logging.getLogger(__name__)

# Strings (query x template) per text-tower call. A 2,000-name vocabulary with 7 templates
# is 14,000 strings; at once, the released B/16 text tower (16 tokens, MLP width 2048) would
# hold 14,000 x 16 x 2048 float32 = 1.8 GB of activations per layer. 1024 keeps a call under
# 134 MB and is still a large enough batch to keep a GPU busy.
TEXT_CHUNK = 1024
# Cosines (box x query) made at a time, B images x P patches x C query columns: 2^21
# float32 = 8 MiB, whatever the vocabulary size (8 images x 3600 patches x 2,300 queries at
# once would be 265 MB). Blocks that stay near the CPU's caches are also faster: on the
# 2-core benchmark (8 images x 3600 boxes, 72 columns a block) a 2,000-name vocabulary cost
# 1.3-1.4x the time of a 20-name one, against 1.6x with blocks of 2^23 (291 columns).
COSINE_BLOCK = 2**21


class Owlv2PseudoLabeler(_Owlv2Adapter):
    """task=pseudo-label, family=owlv2.

    Queries of a row: its caption's n-grams (labeler.pseudo.queries; when
    pseudo_label.use_captions), then the curated vocabulary's names
    (pseudo_label.vocabulary and/or vocabulary_file). Each query's embedding is the mean
    over pseudo_label.templates of the L2-normalised text embeddings of the template filled
    with it (the class head normalises it again).

    Scores: sigmoid of each (box, query) logit. In a row that has caption queries, the
    vocabulary's scores are multiplied by pseudo_label.vocabulary_weight (the paper's
    combined mode, 0.3: caption n-grams win where both describe a box). A row with no
    caption query, or a job without captions, scores the vocabulary unscaled: there is
    nothing for the weight to arbitrate against, and scaling would cap every box at the
    weight (0.3 x sigmoid < 0.3), so no such image could pass the default image threshold.
    Each box is labelled with its best query after that scaling, and kept when its score >
    threshold (TaskSpec.threshold, 0.1; the comparison of the detect task). Its objectness
    is the sigmoid of the OWLv2 objectness head.

    Output per image: {"detections": [{label, score, x0..y1, objectness}] best first,
    "kept": best box score >= pseudo_label.image_threshold, "filter_reason": why not (see
    labeler.pseudo.filtering), "warnings"?}; every image gets its row, a row without any
    query says so in filter_reason. `prompt` is left unset: 300 queries per row would
    weigh more than the boxes; the caption is in the input and the vocabulary is named by
    its size and sha256 in `parameters`.

    Efficiency: vocabulary embeddings are computed once in setup and kept apart; caption
    queries go through an LRU (owlv2.TEXT_CACHE_SIZE entries, keyed by the query string),
    and a batch encodes the union of its rows' missing queries, TEXT_CHUNK strings per
    text-tower call. Queries longer than the text model's context (16 tokens, template
    included) are truncated as Owlv2Grounder truncates them; a row says so in one warning.
    Boxes are scored against blocks of query columns (a row's own caption queries,
    gathered, then the vocabulary; COSINE_BLOCK values a block) keeping a running best per
    box, so memory does not grow with the vocabulary; only each box's best cosine in a block
    becomes a logit and a score (see predict): the vocabulary costs one matrix product and
    one max.
    """

    @classmethod
    def check_spec(cls, spec) -> None:
        options = spec.pseudo_label
        if spec.prompt is not None:
            raise ValueError("task 'pseudo-label' takes its queries from captions and "
                             "pseudo_label.vocabulary, not a prompt")
        if spec.labels:
            raise ValueError("task 'pseudo-label' takes class names in pseudo_label.vocabulary "
                             "(or vocabulary_file), not labels")
        has_vocabulary = any(name.strip() for name in options.vocabulary)
        path = options.vocabulary_file
        if path is not None and not is_s3(path):  # an s3 file is read, and checked, in setup
            if not clean_names(read_names(path)).names:
                raise ValueError(f"pseudo_label.vocabulary_file {path!r} holds no class name")
            has_vocabulary = True
        elif path is not None:
            has_vocabulary = True
        if not options.use_captions and not has_vocabulary:
            raise ValueError("task 'pseudo-label' with use_captions: false needs a vocabulary: "
                             "pseudo_label.vocabulary: [cat, dog] or vocabulary_file")

    def __init__(self, spec):
        super().__init__(spec)
        self._vocabulary: Vocabulary | None = None

    @property
    def vocabulary(self) -> Vocabulary:
        """The cleaned vocabulary, read on first use (setup reads it)."""
        if self._vocabulary is None:
            options = self.spec.pseudo_label
            self._vocabulary = load_vocabulary(options.vocabulary, options.vocabulary_file)
        return self._vocabulary

    def setup(self, device: torch.device) -> None:
        super().setup(device)
        self.text_length = int(self.processor.tokenizer.model_max_length)  # tokens per query
        # query -> (embedding (D,), whether a template's tokens were truncated); LRU order.
        self.text_cache: OrderedDict[str, tuple[torch.Tensor, bool]] = OrderedDict()
        self.stop_words = shipped_word_list(STOP_WORDS_FILE)
        self._load_generic_words()
        self._encode_vocabulary()

    def _load_generic_words(self) -> None:
        path = self.spec.pseudo_label.generic_words_file
        self.generic_words = read_word_list(path) if path else shipped_word_list(GENERIC_WORDS_FILE)

    def _encode_vocabulary(self) -> None:
        """The vocabulary's unit embeddings (V, D), once; kept apart from the LRU."""
        names = list(self.vocabulary.names)
        if not names and not self.spec.pseudo_label.use_captions:
            raise ValueError(f"pseudo_label.vocabulary_file "
                             f"{self.spec.pseudo_label.vocabulary_file!r} holds no class name")
        if names:
            embeds, truncated = self._encode(names)
            self.vocab_unit = _unit(embeds)
        else:
            dim = self.model.config.projection_dim
            self.vocab_unit, truncated = torch.zeros((0, dim), device=self.device), []
        cut = [name for name, flag in zip(names, truncated) if flag]
        if cut:
            log.warning("vocabulary: %s", truncation_warning(cut, len(names), self.text_length))

    def with_spec(self, spec) -> "Owlv2PseudoLabeler":
        """Other parameters on the same weights: new templates start a new cache; a new
        vocabulary or templates re-encode the vocabulary; a new generic-word file is read."""
        variant = super().with_spec(spec)
        old, new = self.spec.pseudo_label, spec.pseudo_label
        if new.templates != old.templates:
            variant.text_cache = OrderedDict()
        if (new.vocabulary, new.vocabulary_file) != (old.vocabulary, old.vocabulary_file):
            variant._vocabulary = None
        if (new.vocabulary, new.vocabulary_file, new.templates) != \
                (old.vocabulary, old.vocabulary_file, old.templates):
            variant._encode_vocabulary()
        if new.generic_words_file != old.generic_words_file:
            variant._load_generic_words()
        return variant

    def parameters(self) -> dict:
        options = self.spec.pseudo_label
        return {"threshold": self.spec.threshold, "image_threshold": options.image_threshold,
                "vocabulary_weight": options.vocabulary_weight, "templates": options.templates,
                "use_captions": options.use_captions, "max_queries": options.max_queries,
                "max_ngram": options.max_ngram, "generic_words_file": options.generic_words_file,
                "vocabulary_size": len(self.vocabulary.names),
                "vocabulary_sha256": self.vocabulary.digest, "preprocess": self.spec.preprocess}

    def queries_for(self, image: ImageInput) -> list[str]:
        """The row's caption queries (the vocabulary is added in predict)."""
        options = self.spec.pseudo_label
        if not options.use_captions:
            return []
        return caption_queries(image.caption, self.stop_words, self.generic_words,
                               options.max_ngram, options.max_queries)

    def preprocess(self, images: list[ImageInput], stacked: np.ndarray | None = None) -> dict:
        """-> {"pixel_values": (B, 3, S, S) on the device (see _pixel_values), "queries":
        each row's caption queries}."""
        return {"pixel_values": self._pixel_values(images, stacked),
                "queries": [self.queries_for(im) for im in images]}

    @torch.inference_mode()
    def _encode(self, queries: list[str]) -> tuple[torch.Tensor, list[bool]]:
        """Queries (N) -> (template-ensembled embeddings (N, D), truncated flags (N)).

        Each template filled with each query is tokenised as the processor does, truncated
        to the text model's length, and embedded TEXT_CHUNK strings per call; a query's
        embedding is the mean of its templates' L2-normalised embeddings. Only texts that
        fill the whole length may have been cut: those alone are tokenised again, uncut, to
        tell (tokenising is most of the text side's CPU time)."""
        templates = self.spec.pseudo_label.templates
        texts = [template.replace("{}", query) for query in queries for template in templates]
        pieces, full = [], []
        for start in range(0, len(texts), TEXT_CHUNK):
            tokens = self.processor(text=[texts[start:start + TEXT_CHUNK]], truncation=True,
                                    return_tensors="pt")
            pieces.append(self._text_features(tokens))
            full.append(tokens["attention_mask"].all(dim=1))
        embeds = torch.cat(pieces).view(len(queries), len(templates), -1).mean(dim=1)
        cut = np.zeros(len(texts), dtype=bool)
        candidates = torch.cat(full).nonzero()[:, 0].tolist()
        if candidates:
            uncut = self.processor.tokenizer([texts[i] for i in candidates], verbose=False)
            cut[candidates] = [len(ids) > self.text_length for ids in uncut["input_ids"]]
        return embeds, cut.reshape(len(queries), len(templates)).any(axis=1).tolist()

    def _caption_embeddings(self, queries: list[str]) -> tuple[torch.Tensor, list[bool]]:
        """Distinct caption queries (U) -> (embeddings (U, D), truncated flags), from the
        LRU; the ones it lacks are encoded together and added."""
        cache = self.text_cache
        missing = [q for q in queries if q not in cache]
        if missing:
            embeds, truncated = self._encode(missing)
            for query, embed, flag in zip(missing, embeds, truncated):
                cache[query] = (embed, flag)
        for query in queries:
            cache.move_to_end(query)
        embeds = torch.stack([cache[q][0] for q in queries])
        truncated = [cache[q][1] for q in queries]
        while len(cache) > owlv2.TEXT_CACHE_SIZE:  # after the lookups: a batch may hold more
            cache.popitem(last=False)
        return embeds, truncated

    def _class_parts(self, image_feats: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The box side of the class head (Owlv2ClassPredictionHead.forward): image_feats
        (B, P, E) -> unit class embeddings (B, P, D), logit shift (B, P), logit scale (B, P)
        > 0; a box's logit for a query is (cosine + shift) x scale."""
        head = self.model.class_head
        embeds = _unit(head.dense0(image_feats))
        shift = head.logit_shift(image_feats)[..., 0]
        scale = head.elu(head.logit_scale(image_feats))[..., 0] + 1
        return embeds, shift, scale

    def _similarities(self, class_embeds: torch.Tensor, rows: list[list[str]],
                      union: list[str], union_embeds: torch.Tensor | None):
        """Cosines of every box with the batch's query columns, in blocks of at most
        COSINE_BLOCK values: (cosines (B, P, C), the columns' label ids (B, C) into union +
        vocabulary names, score weight (B, 1)).

        A row's caption columns are its own queries gathered from the union (padding at
        -inf, so never a row's best); the vocabulary's columns are the same for every row,
        weighted by vocabulary_weight in rows that have caption queries.
        """
        batch, patches, _ = class_embeds.shape
        device, dtype = class_embeds.device, class_embeds.dtype
        chunk_size = max(1, COSINE_BLOCK // (batch * patches))  # query columns per block
        width = max(len(queries) for queries in rows)
        if width:
            column = {q: i for i, q in enumerate(union)}
            index = torch.zeros((batch, width), dtype=torch.long)
            padding = torch.ones((batch, width), dtype=torch.bool)
            for b, queries in enumerate(rows):
                index[b, :len(queries)] = torch.tensor([column[q] for q in queries])
                padding[b, :len(queries)] = False
            index, padding = index.to(device), padding.to(device)
            unit = _unit(union_embeds).to(dtype)
            ones = torch.ones((batch, 1), device=device)
            for start in range(0, width, chunk_size):
                ids = index[:, start:start + chunk_size]
                cosines = torch.bmm(class_embeds, unit[ids].transpose(1, 2))
                cosines.masked_fill_(padding[:, None, start:start + chunk_size], -torch.inf)
                yield cosines, ids, ones
        weight = self.spec.pseudo_label.vocabulary_weight
        weights = torch.tensor([[weight if queries else 1.0] for queries in rows], device=device)
        vocab = self.vocab_unit.to(dtype)
        for start in range(0, vocab.shape[0], chunk_size):
            chunk = vocab[start:start + chunk_size]
            ids = torch.arange(len(union) + start, len(union) + start + chunk.shape[0],
                               device=device)
            yield class_embeds @ chunk.T, ids[None].expand(batch, -1), weights

    @torch.inference_mode()
    def predict(self, inputs: dict) -> dict:
        """-> scores (B, P): each box's best query score after the vocabulary weight;
        label_ids (B, P) into names (the batch's caption queries, then the vocabulary);
        boxes (B, P, 4) cxcywh in [0, 1] of the padded square; objectness logits (B, P);
        the rows' queries and the set of truncated ones.

        The class head's logits, reordered: (cosine + shift) x scale with scale > 0 and
        the sigmoid are increasing, and the weight is one per row and block, so a box's best
        query in a block is its best cosine, and only that one is turned into a score. Same
        numbers as the head's (B, P, Q) logits, without making them."""
        model, rows = self.model, inputs["queries"]
        image_feats, feature_map = self._image_features(inputs["pixel_values"])
        class_embeds, shift, scale = self._class_parts(image_feats)
        union = list(dict.fromkeys(q for queries in rows for q in queries))
        union_embeds, truncated = self._caption_embeddings(union) if union else (None, [])
        scores = torch.zeros(shift.shape, device=shift.device)
        logits = torch.full(shift.shape, -torch.inf, device=shift.device)
        label_ids = torch.zeros(shift.shape, dtype=torch.long, device=shift.device)
        for cosines, ids, weight in self._similarities(class_embeds, rows, union, union_embeds):
            best, column = cosines.max(dim=-1)  # (B, P)
            logit = ((best + shift) * scale).float()
            score = torch.sigmoid(logit) * weight
            # Equal scores (float32's sigmoid is 1.0 from logit ~17 on) go to the higher
            # logit, then to the earlier column (captions first): chunking changes nothing.
            better = (score > scores) | ((score == scores) & (logit > logits))
            scores = torch.where(better, score, scores)
            logits = torch.where(better, logit, logits)
            label_ids = torch.where(better, ids.gather(1, column), label_ids)
        return {"scores": scores, "label_ids": label_ids,
                "boxes": model.box_predictor(image_feats, feature_map),
                "objectness": model.objectness_predictor(image_feats),
                "names": union + list(self.vocabulary.names), "rows": rows,
                "truncated": {q for q, flag in zip(union, truncated) if flag}}

    def postprocess(self, raw: dict, images: list[ImageInput]) -> list[dict]:
        """Threshold, boxes to original pixels (clipped), sorted by score; the image's
        verdict and warnings."""
        options = self.spec.pseudo_label
        scores = raw["scores"]
        corners = pixel_corners(raw["boxes"], images)
        ranked = ranked_detections(scores, scores > self.spec.threshold, corners,
                                   raw["label_ids"], raw["names"],
                                   torch.sigmoid(raw["objectness"].float()))
        has_vocabulary = bool(self.vocabulary.names)
        results = []
        for image, queries, dets in zip(images, raw["rows"], ranked):
            notes = []
            if not queries and not has_vocabulary:
                kept, reason = False, no_queries_reason(image.caption)
            else:
                best = dets[0]["score"] if dets else None
                kept, reason = image_verdict(best, options.image_threshold, self.spec.threshold)
            if options.use_captions and not queries and has_vocabulary:
                notes.append("the caption gives no query (empty, or only stop words, generic "
                             "words and numbers): the vocabulary alone was used, unscaled")
            cut = [q for q in queries if q in raw["truncated"]]
            if cut:
                notes.append(truncation_warning(cut, len(queries), self.text_length))
            result = {"detections": dets, "kept": kept, "filter_reason": reason}
            if notes:
                result["warnings"] = notes
            results.append(result)
        return results


def _unit(x: torch.Tensor) -> torch.Tensor:
    """x / (|x| + 1e-6) along the last axis: the class head's normalisation, epsilon included."""
    return x / (torch.linalg.norm(x, dim=-1, keepdim=True) + 1e-6)
