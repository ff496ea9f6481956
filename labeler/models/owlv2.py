"""OWLv2: open-vocabulary detection (fixed labels), grounding of per-row text queries, and
detection by example (a query image).

Reference usage (transformers docs), one image at a time:
- detect / ground: processor(text=[queries], images=image) -> model(**inputs)
  -> processor.post_process_grounded_object_detection(outputs, threshold, target_sizes);
- detect-by-example: processor(images=image, query_images=query_image) ->
  model.image_guided_detection(**inputs) ->
  processor.post_process_image_guided_detection(outputs, threshold, nms_threshold, target_sizes).
What differs here, for speed, with the same numbers:
- text queries and the query image are encoded once (setup, or a cache), not once per image;
  predict() runs the vision tower on the batch and the heads against those embeddings;
- post-processing uses the *padded square* size max(h, w) as the target size: OWLv2 pads
  every image to a square (bottom and right) before resizing, so its normalised boxes are
  relative to that square. Passing (h, w) as the documentation's example does would stretch
  every box of a non-square image.
Boxes are then clipped to the image and sorted by score, best first; a box that lies wholly
in the padding (outside the image) is dropped: clipped, it has no area and labels nothing.

Tiles (spec.tiles, labeler.models.tiling): each of a batch's B images becomes T model
inputs, the whole image and its tiles, each prepared and labelled exactly as an image of
that size would be, so predict's batch is B * T; each input's boxes are mapped into its
window of the image and clipped to it, and an image's T lists are merged into one.
"""

from __future__ import annotations

import functools
import os
import threading
import warnings
from collections import OrderedDict
from pathlib import PurePosixPath

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import batched_nms, box_iou

from labeler.config import ExampleSpec, InputSpec
from labeler.media.image import decode_image
from labeler.models.base import (Adapter, ExampleImage, ImageInput, box_fits, channels_first,
                                 resolve_dtype)
from labeler.models.tiling import Window, cut_windows, merge_windows, tile_windows
from labeler.storage import is_s3, read_bytes, resolve_model_source

# Text queries are kept per actor, keyed by query string, in an LRU of this many entries:
# a fixed vocabulary (LVIS has 1,203 classes) fits whole, and free-text rows that bring new
# phrases all the time hold at most 4096 x D floats, 12 MiB at the L/14 width D = 768 in
# float32, little beside the weights (0.6 GB for B/16).
TEXT_CACHE_SIZE = 4096

# post_process_image_guided_detection draws (and returns) only boxes whose "alpha",
# (score - 0.1 best) / (0.9 best) with best = the image's top score + 1e-6, is positive: a
# box scoring under a tenth of the image's best box is dropped whatever the threshold.
EXAMPLE_RELATIVE_FLOOR = 0.1
EXAMPLE_BEST_EPS = 1e-6
# The query image is read whole, as the reference reads it, under the job's default
# decompression-bomb limit.
QUERY_MAX_PIXELS = InputSpec.model_fields["max_pixels"].default
# Requests' example images kept embedded per replica: (image, boxes) pairs, a (L, D) tensor
# each (a few KB); an annotation session reuses one example over many images.
EXAMPLE_IMAGE_CACHE_SIZE = 256


class _Owlv2Adapter(Adapter):
    """Loading, image preprocessing (both modes, CPU stage or device) and box geometry,
    shared by the OWLv2 tasks. Subclasses add their queries, predict and postprocess."""

    @classmethod
    def input_refusal(cls, spec, width: int, height: int, max_pixels: int) -> str | None:
        """The processor pads each input (the image, or each tile window) to a max(w, h)
        square of float32 before resizing it: a 20000 x 20 strip (400k pixels, 1.4 KB as a
        PNG) became a 20000 x 20000 canvas (4.8 GB and minutes of blur; the replica was
        killed for memory). Fast mode resizes first, then pads the small image."""
        if spec.preprocess == "fast":
            return None
        windows = ([(0, 0, width, height)] if spec.tiles is None
                   else tile_windows(width, height, spec.tiles))
        side = max(max(x1 - x0, y1 - y0) for x0, y0, x1, y1 in windows)
        if side * side <= max_pixels:
            return None
        what = f"a {width}x{height} image" if spec.tiles is None else \
            f"the tiles of a {width}x{height} image"
        return (f"OWLv2's processor pads {what} to a {side}x{side} square ({side * side} "
                f"pixels), over the limit of {max_pixels} pixels; preprocess: fast resizes "
                f"before padding")

    def __init__(self, spec):
        super().__init__(spec)
        # Per-thread scratch tensors (see _normalize): Serve runs batches in worker threads.
        self._cpu_scratch = threading.local()

    def setup_cpu_stage(self) -> None:
        from transformers import Owlv2Processor

        kwargs = {"revision": self.spec.model.revision} if self.spec.model.revision else {}
        self.processor = Owlv2Processor.from_pretrained(
            resolve_model_source(self.spec.model.source), **kwargs)
        image_processor = self.processor.image_processor
        self.input_size = int(image_processor.size["height"])
        # Normalisation in uint8 units: (v / 255 - mean) / std == (v - 255 mean) / (255 std).
        self.mean255 = torch.tensor(image_processor.image_mean) * 255.0
        self.std255 = torch.tensor(image_processor.image_std) * 255.0

    def setup(self, device: torch.device) -> None:
        from transformers import Owlv2ForObjectDetection

        self.setup_cpu_stage()
        source = resolve_model_source(self.spec.model.source)
        kwargs = {"revision": self.spec.model.revision} if self.spec.model.revision else {}
        self.device = device
        self.dtype = resolve_dtype(self.spec.model.dtype, device)
        self.model = Owlv2ForObjectDetection.from_pretrained(source, dtype=self.dtype, **kwargs)
        self.model.to(device).eval()
        # model.compile: the vision tower compiled, one graph per input shape (dynamic=False):
        # a job's batches share one shape but its last; kernels for dynamic shapes would be
        # slower for all of them. Compiled on its first call.
        self.compiled_embedder = (torch.compile(self.model.image_embedder, dynamic=False)
                                  if self.spec.model.compile else None)
        self.revision = getattr(self.model.config, "_commit_hash", None) or self.revision

    def _text_features(self, text) -> torch.Tensor:
        """Tokenised queries (input_ids, attention_mask: (N, T)) -> embeddings (N, D), as the
        model's forward makes them: projected pooled text output, L2-normalised."""
        text = text.to(self.device)
        pooled = self.model.owlv2.get_text_features(
            input_ids=text["input_ids"], attention_mask=text["attention_mask"]
        ).pooler_output
        return pooled / torch.linalg.norm(pooled, ord=2, dim=-1, keepdim=True)

    @property
    def inputs_per_image(self) -> int:
        """Model inputs an image becomes: 1, or its windows when tiled."""
        return self.spec.tiles.inputs_per_image if self.spec.tiles else 1

    @property
    def _device_cuts_windows(self) -> bool:
        """Tiled, with the processor on the device (a GPU actor in processor mode): the CPU
        stage hands over the decoded image once and the actor cuts the windows."""
        return self.spec.preprocess != "fast" and not self.model_on_cpu

    @property
    def cpu_inputs_per_image(self) -> int:
        return 1 if self.spec.tiles is None or self._device_cuts_windows else self.inputs_per_image

    def cpu_transform(self, pixels: np.ndarray) -> np.ndarray | None:
        """Decoded (h, w, 3) uint8 -> (3, S, S) model input, when the CPU stage should make
        it; tiled: (T, 3, S, S), one per window (tile_windows), made the same way."""
        if self.spec.tiles is None:
            return self._transform_window(pixels)
        if self._device_cuts_windows:
            return None
        return np.stack([self._transform_window(window)
                         for window in cut_windows(pixels, self.spec.tiles)])

    def _transform_window(self, pixels: np.ndarray) -> np.ndarray | None:
        """(h, w, 3) uint8 -> (3, S, S) model input, when the CPU stage should make it.

        fast: resize + pad here, left uint8; the actor normalises on its device. A float
        canvas would be 4x the bytes through the object store: on the 2-core benchmark,
        shipping uint8 took two 0.5-CPU actors from 35.8 to 37.3 images/s.
        processor: run here for CPU actors (it parallelises over decode tasks); GPU actors
        run it on the device (None).
        """
        if self.spec.preprocess == "fast":
            return padded_canvas(pixels, self.input_size)
        if self.model_on_cpu:
            return self._processor_pixels(pixels)[0].numpy()
        return None

    def _processor_pixels(self, pixels: np.ndarray) -> torch.Tensor:
        """One (h, w, 3) uint8 image through the checkpoint's image processor -> (1, 3, S, S)."""
        return self.processor.image_processor(
            images=[channels_first(pixels)], return_tensors="pt")["pixel_values"]

    def _normalize(self, canvas: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, S, S) -> float32 normalised, on the canvas's device.

        On CPU the result is written into a scratch tensor kept per thread (its first rows,
        when the batch is smaller than the largest seen, as Serve's are), so it is valid
        only until this thread's next call (_image_features consumes it at once). A fresh
        88 MB tensor (8 x 3 x 960 x 960) would be new pages from the kernel every batch,
        and faulting them in cost more than the normalisation itself (6.5 vs 3.5 ms per
        image on one thread; benchmarks/owlv2_cpu.py).
        """
        mean = self.mean255.to(canvas.device).view(3, 1, 1)
        std = self.std255.to(canvas.device).view(3, 1, 1)
        if canvas.device.type != "cpu":
            return canvas.float().sub_(mean).div_(std)  # CUDA's caching allocator reuses memory
        scratch = self._cpu_scratch.__dict__
        buffer = scratch.get("normalized")
        if (buffer is None or buffer.shape[1:] != canvas.shape[1:]
                or buffer.shape[0] < canvas.shape[0]):
            with torch.inference_mode(False):  # a normal tensor: writable in and out of it
                buffer = scratch["normalized"] = torch.empty(canvas.shape, dtype=torch.float32)
        return buffer[:canvas.shape[0]].copy_(canvas).sub_(mean).div_(std)

    def _pixel_values(self, images: list[ImageInput], stacked: np.ndarray | None) -> torch.Tensor:
        """Images as cpu_transform left them -> pixel_values (B * T, 3, S, S) on the device,
        T = inputs_per_image, an image's inputs in a row: the uint8 canvas in fast mode
        (normalised by _image_features, so a batch waiting for its turn holds a quarter of
        the bytes), else normalised floats of the model's dtype."""
        if self.spec.preprocess == "fast" or self.model_on_cpu:
            if stacked is None:
                stacked = np.stack([im.pixels for im in images])
            if self.spec.tiles is not None:  # (B, T, 3, S, S) -> (B * T, 3, S, S)
                stacked = stacked.reshape(-1, *stacked.shape[2:])
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
                pixels = torch.from_numpy(stacked).to(self.device)
            if pixels.dtype == torch.uint8:
                return pixels
        else:
            tensors = [channels_first(window) for im in images for window in self._windows(im)]
            pixels = self.processor.image_processor(
                images=tensors, return_tensors="pt", device=self.device)["pixel_values"]
        return pixels.to(self.device, self.dtype)

    def _windows(self, image: ImageInput) -> list[np.ndarray]:
        """The pixels of an image's model inputs: the image, or its windows when tiled."""
        if self.spec.tiles is None:
            return [image.pixels]
        return cut_windows(image.pixels, self.spec.tiles)

    def _corners(self, boxes: torch.Tensor, images: list[ImageInput]) -> torch.Tensor:
        """boxes (B * T, P, 4) cxcywh in [0, 1] of each model input's padded square -> xyxy
        float pixels of the original image, each clipped to its input's window."""
        tiles = self.spec.tiles
        windows = ([(0, 0, im.width, im.height) for im in images] if tiles is None else
                   [w for im in images for w in tile_windows(im.width, im.height, tiles)])
        return window_corners(boxes, windows)

    def _per_image(self, ranked: list[list[dict]]) -> list[list[dict]]:
        """Detections of each model input (B * T lists) -> of each image (B lists): an
        image's windows merged (merge_windows) when tiled."""
        if self.spec.tiles is None:
            return ranked
        t = self.inputs_per_image
        return [merge_windows(ranked[i:i + t], self.spec.tiles.merge_threshold)
                for i in range(0, len(ranked), t)]

    def _image_features(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """pixel_values (B, 3, S, S), normalised or the fast mode's uint8 canvas -> patch
        features (B, P, D) and the same as a feature map (B, g, g, D), P = g * g patches:
        the vision tower, as the model's forward runs it."""
        if pixel_values.dtype == torch.uint8:
            pixel_values = self._normalize(pixel_values).to(self.dtype)
        embed = self.compiled_embedder or self.model.image_embedder
        feature_map, _ = embed(pixel_values=pixel_values)
        batch, grid_h, grid_w, dim = feature_map.shape
        return feature_map.reshape(batch, grid_h * grid_w, dim), feature_map


class Owlv2Detector(_Owlv2Adapter):
    """task=detect, family=owlv2. Output per image: {"detections": [{label, score, x0..y1}],
    "warnings"?}.

    Each label is asked by its text queries (`spec.queries`, else its own name), all
    encoded once in setup(). score: sigmoid of the best query's logit, so a label with
    several queries scores its best one (with one query per label, this is the documented
    post_process_object_detection); the box is labelled with that query's label and kept
    when score > the label's threshold (`spec.threshold_for`).

    Prompt ensembling (`spec.templates`, as CLIP and OWL-ViT evaluate): a query's embedding
    is the mean of the L2-normalised embeddings of each template filled with it (the class
    head normalises it again); the default ["{}"] is the query alone, the documented usage.
    Texts are tokenised as the processor does, but truncated to the text tower's length (16
    tokens in the released checkpoints) where the documented usage would raise; every row
    then says which query was cut, in a warning.
    """

    @classmethod
    def check_spec(cls, spec) -> None:
        if not spec.labels:
            raise ValueError("task 'detect' needs at least one label (labels: [cat, dog])")
        if spec.prompt:
            raise ValueError("OWLv2 detect takes class names in labels, not a prompt")

    def setup(self, device: torch.device) -> None:
        super().setup(device)
        self.text_length = int(self.processor.tokenizer.model_max_length)  # tokens per text
        self._set_vocabulary(self.spec)

    def with_spec(self, spec) -> "Owlv2Detector":
        variant = super().with_spec(spec)
        if (spec.label_queries(), spec.templates) != (self.spec.label_queries(),
                                                      self.spec.templates):
            variant._set_vocabulary(spec)  # new queries, same text tower
        else:  # the same queries may name other labels (a request naming a query as one)
            variant.labels = list(spec.labels)
        return variant

    @torch.inference_mode()
    def _set_vocabulary(self, spec) -> None:
        """Encode the spec's queries (Q), each filled into each of its templates (T):
        query_embeds (Q, D), query_mask (Q,) (a text whose first token is id 0 is padding),
        query_label (Q,) the index in `labels` each query asks for, and truncation_warnings
        for the rows, one per query whose text (template included) was cut."""
        per_label = spec.label_queries()
        queries = [query for label_queries in per_label for query in label_queries]
        templates = spec.templates
        texts = [template.replace("{}", query) for query in queries for template in templates]
        tokens = self.processor(text=[texts], truncation=True, return_tensors="pt")
        self.labels = list(spec.labels)
        self.query_embeds = self._text_features(tokens).view(
            len(queries), len(templates), -1).mean(dim=1)
        self.query_mask = (tokens["input_ids"][:, 0] > 0).view(
            len(queries), len(templates)).all(dim=1).to(self.device)
        self.query_label = torch.tensor(
            [k for k, label_queries in enumerate(per_label) for _ in label_queries],
            device=self.device)
        lengths = [len(ids) for ids in self.processor.tokenizer(texts, verbose=False)["input_ids"]]
        cut = [text for text, length in zip(texts, lengths) if length > self.text_length]
        self.truncation_warnings = [
            f"query text {text!r} is longer than the text model's {self.text_length} tokens; "
            f"it was truncated" for text in cut]

    def preprocess(self, images: list[ImageInput], stacked: np.ndarray | None = None) -> torch.Tensor:
        """Images as cpu_transform left them -> pixel_values (B * T, 3, S, S) on the device,
        T model inputs an image (see _pixel_values)."""
        return self._pixel_values(images, stacked)

    @torch.inference_mode()
    def predict(self, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        """-> logits (B, P, Q), boxes (B, P, 4) cxcywh in [0, 1] of the padded square,
        objectness logits (B, P); P = patches, Q = queries."""
        model = self.model
        image_feats, feature_map = self._image_features(pixel_values)
        batch = image_feats.shape[0]
        queries = self.query_embeds.to(image_feats.dtype)[None].expand(batch, -1, -1)
        mask = self.query_mask[None].expand(batch, -1)
        logits, _ = model.class_predictor(image_feats, queries, mask)
        boxes = model.box_predictor(image_feats, feature_map)
        objectness = model.objectness_predictor(image_feats)
        return {"logits": logits, "boxes": boxes, "objectness": objectness}

    def postprocess(self, raw: dict[str, torch.Tensor], images: list[ImageInput]) -> list[dict]:
        """Best query per box, its label's threshold, boxes to original pixels (clipped),
        sorted by score."""
        best = raw["logits"].float().max(dim=-1)
        scores = torch.sigmoid(best.values)  # (B, P)
        label_ids = self.query_label.to(best.indices.device)[best.indices]  # (B, P)
        thresholds = torch.tensor([self.spec.threshold_for(label) for label in self.labels],
                                  device=scores.device)
        corners = self._corners(raw["boxes"], images)
        ranked = self._per_image(ranked_detections(scores, scores > thresholds[label_ids],
                                                   corners, label_ids, self.labels))
        if self.truncation_warnings:
            return [{"detections": dets, "warnings": list(self.truncation_warnings)}
                    for dets in ranked]
        return [{"detections": dets} for dets in ranked]


def split_queries(text: str) -> list[str]:
    """A prompt of comma-separated phrases -> the query list: each phrase stripped, empty
    phrases dropped ("a, ,b" -> ["a", "b"]), repeats dropped (first kept), order kept."""
    phrases = (phrase.strip() for phrase in text.split(","))
    return list(dict.fromkeys(phrase for phrase in phrases if phrase))


class Owlv2Grounder(_Owlv2Adapter):
    """task=ground, family=owlv2: each row's own text queries.

    Queries of a row: its prompt (the row's, else the spec's), split on commas by
    split_queries ("a red car, a person" -> ["a red car", "a person"]); when neither the row
    nor the spec has a prompt, the spec's labels. A spec gives one or the other, not both
    (check_spec); there is no built-in default (default_prompt None): nothing sensible to
    look for in every image.

    A batch encodes the distinct queries of all its rows with one text-tower call (only those
    not already in the actor's LRU cache) and scores every image against its own queries
    only: the others are masked as the model masks padding queries, so each row gets what
    the documented one-image usage gives. Queries are tokenised as the processor does, but
    truncated to the text tower's length (16 tokens in the released checkpoints) where the
    documented usage would raise; such a row gets a warning.

    Output per image: {"detections": [{label: the query, score, x0..y1}], "prompt": the
    queries joined by ", ", "warnings"?}; score: sigmoid of the best query's logit, a box is
    kept when score > threshold. A row whose prompt holds no phrase (", ,") gets no detection
    and a warning.
    """

    @classmethod
    def check_spec(cls, spec) -> None:
        if spec.prompt is not None and spec.labels:
            raise ValueError("task 'ground' takes its queries from prompt ('a red car, a "
                             "person') or from labels, not both")
        if spec.prompt is not None and not split_queries(spec.prompt):
            raise ValueError(f"task 'ground': prompt {spec.prompt!r} holds no query phrase; "
                             "give phrases separated by commas: 'a red car, a person'")
        if spec.prompt is None and not spec.labels:
            raise ValueError("task 'ground' needs default queries: prompt: 'a red car, a "
                             "person' or labels: [a red car, a person] (rows may bring their "
                             "own in a prompt column)")

    def setup(self, device: torch.device) -> None:
        super().setup(device)
        self.text_length = int(self.processor.tokenizer.model_max_length)  # tokens per query
        # query -> (embedding (D,), whether its tokens were truncated); least recent first.
        self.text_cache: OrderedDict[str, tuple[torch.Tensor, bool]] = OrderedDict()

    def parameters(self) -> dict:
        return {**super().parameters(), "prompt": self.spec.prompt}

    def queries_for(self, image: ImageInput) -> list[str]:
        """This row's queries (see the class docstring)."""
        prompt = self.prompt_for(image)
        return split_queries(prompt) if prompt is not None else list(self.spec.labels)

    def preprocess(self, images: list[ImageInput], stacked: np.ndarray | None = None) -> dict:
        """-> {"pixel_values": (B * T, 3, S, S) on the device, "queries": one list per model
        input (an image's own, T times when tiled)}."""
        return {"pixel_values": self._pixel_values(images, stacked),
                "queries": [queries for im in images
                            for queries in [self.queries_for(im)] * self.inputs_per_image]}

    @torch.inference_mode()
    def _query_embeddings(self, queries: list[str]) -> tuple[torch.Tensor, list[bool]]:
        """Distinct queries -> (embeddings (U, D), truncated flags), from the cache; the
        queries it lacks are encoded in one text-tower call and added to it."""
        cache = self.text_cache
        missing = [q for q in queries if q not in cache]
        if missing:
            text = self.processor(text=[missing], truncation=True, return_tensors="pt")
            untruncated = self.processor.tokenizer(missing, verbose=False)["input_ids"]
            lengths = [len(ids) for ids in untruncated]
            for query, embed, length in zip(missing, self._text_features(text), lengths):
                cache[query] = (embed, length > self.text_length)
        for query in queries:
            cache.move_to_end(query)
        embeds = torch.stack([cache[q][0] for q in queries])
        truncated = [cache[q][1] for q in queries]
        while len(cache) > TEXT_CACHE_SIZE:  # after the lookups: a batch may hold more
            cache.popitem(last=False)
        return embeds, truncated

    @torch.inference_mode()
    def predict(self, inputs: dict) -> dict:
        """-> logits (B, P, U) with every row's foreign queries at the dtype's minimum,
        boxes (B, P, 4) cxcywh in [0, 1] of the padded square, the union of the batch's
        queries (U,), their truncated flags, and each row's queries."""
        model, rows = self.model, inputs["queries"]
        image_feats, feature_map = self._image_features(inputs["pixel_values"])
        batch, patches, _ = image_feats.shape
        union = list(dict.fromkeys(q for queries in rows for q in queries))
        boxes = model.box_predictor(image_feats, feature_map)
        if not union:
            logits = image_feats.new_zeros((batch, patches, 0))
            return {"logits": logits, "boxes": boxes, "union": [], "truncated": [], "rows": rows}
        embeds, truncated = self._query_embeddings(union)
        column = {q: i for i, q in enumerate(union)}
        mask = torch.zeros((batch, len(union)), dtype=torch.bool)
        for b, queries in enumerate(rows):
            mask[b, [column[q] for q in queries]] = True
        logits, _ = model.class_predictor(
            image_feats, embeds.to(image_feats.dtype)[None].expand(batch, -1, -1),
            mask.to(image_feats.device))
        return {"logits": logits, "boxes": boxes, "union": union, "truncated": truncated,
                "rows": rows}

    def postprocess(self, raw: dict, images: list[ImageInput]) -> list[dict]:
        """Best own query per box, threshold, boxes to original pixels (clipped), sorted."""
        logits = raw["logits"].float()
        if logits.shape[-1]:
            best = logits.max(dim=-1)
            scores, label_ids = torch.sigmoid(best.values), best.indices  # (B, P)
        else:  # no row of the batch has a query
            scores = torch.zeros(logits.shape[:2], device=logits.device)
            label_ids = torch.zeros(logits.shape[:2], dtype=torch.long, device=logits.device)
        corners = self._corners(raw["boxes"], images)
        ranked = self._per_image(ranked_detections(scores, scores > self.spec.threshold,
                                                   corners, label_ids, raw["union"]))
        truncated = {q for q, flag in zip(raw["union"], raw["truncated"]) if flag}
        results = []
        image_queries = raw["rows"][::self.inputs_per_image]
        for image, queries, dets in zip(images, image_queries, ranked):
            result = {"detections": dets, "prompt": ", ".join(queries)}
            notes = [f"query {q!r} is longer than the text model's {self.text_length} tokens; "
                     "it was truncated" for q in queries if q in truncated]
            if not queries:
                notes.append(f"prompt {self.prompt_for(image)!r} holds no query phrase "
                             "(phrases are separated by commas); nothing was looked for")
            if notes:
                result["warnings"] = notes
            results.append(result)
        return results


class Owlv2ExampleDetector(_Owlv2Adapter):
    """task=detect-by-example, family=owlv2: find objects like the one in spec.query_image,
    or like the boxes drawn in the image itself (ImageInput.examples).

    setup() embeds the query image once, as image_guided_detection does: the class embedding
    of its box with the highest objectness. The query image is read with
    labeler.storage.read_bytes (a path or an s3:// URI), decoded at full size, and always
    preprocessed by the checkpoint's image processor (exact; one image, once), whatever
    spec.preprocess says for the target images.

    An image with examples (boxes a user drew around objects, each with a label) is searched
    for those instead, from its own forward pass (no second one): each example's embedding is
    the class embedding of the patch whose predicted box matches the drawn box (see
    example_patch), and a label's examples are averaged into one query (few-shot, as in the
    OWL-ViT paper). A task may have no query_image: each image then brings its examples
    (a request's `examples`, an input's `examples` field).

    Output per image: {"detections": [{label, score, x0..y1}]}; label: the query image's file
    stem ("s3://bucket/queries/red_mug.jpg" -> "red_mug"), or the example's label. score:
    sigmoid of the box's logit (its best query's), the value the documented post-processing
    thresholds (it returns instead a display alpha, (score - 0.1 best) / (0.9 best), which
    puts every image's top box at 1.0 whatever its confidence). Boxes kept, as that
    post-processing keeps them: score >= spec.threshold, score > 0.1 x (the image's best
    score + 1e-6), and not suppressed by greedy NMS over the image's boxes at IoU >
    spec.nms_threshold (IoU in the padded square, before clipping). Rows' prompts are
    ignored.
    """

    @classmethod
    def check_spec(cls, spec) -> None:
        """The query image or examples given must be usable: files that exist, boxes inside
        them (local images are read; s3:// ones when setup reads them). Giving none is for
        the job's plan (every input then brings examples) or the server (every request
        does) to check."""
        if (spec.query_image and not is_s3(spec.query_image)
                and not os.path.isfile(spec.query_image)):
            raise ValueError(f"query_image {spec.query_image!r} is not a file")
        if spec.query_box is not None and spec.query_image and not is_s3(spec.query_image):
            check_query_box(spec.query_box, *local_image_size(spec.query_image))
        for i, example in enumerate(spec.examples or ()):
            if is_s3(example.image):
                continue
            if not os.path.isfile(example.image):
                raise ValueError(f"examples.{i}.image {example.image!r} is not a file")
            check_query_box(example.box, *local_image_size(example.image), f"examples.{i}.box ")
        if spec.prompt:
            raise ValueError("task 'detect-by-example' takes a query_image, not a prompt")
        if spec.labels:
            raise ValueError("task 'detect-by-example' takes no labels: its one class is the "
                             "query image, labelled with its file stem")

    def setup(self, device: torch.device) -> None:
        super().setup(device)
        # The spec's queries: labels and embeddings (1, L, D); none when requests bring them.
        self.query_labels, self.query_embeds = [], None
        # Requests' example images: (image key, drawn boxes) -> (labels, queries (L, D)).
        self._example_cache: OrderedDict[tuple, tuple[list[str], torch.Tensor]] = OrderedDict()
        self._example_lock = threading.Lock()  # Serve runs batches in worker threads
        examples = self.spec.examples
        if self.spec.query_image and self.spec.query_box is not None:  # a box in it: an example
            examples = [ExampleSpec(image=self.spec.query_image, box=self.spec.query_box,
                                    label=PurePosixPath(self.spec.query_image).stem)]
        if examples:
            self.query_labels, embeds = self._embed_spec_examples(examples)
            self.query_embeds = embeds[None]
        elif self.spec.query_image:
            self.query_labels = [PurePosixPath(self.spec.query_image).stem]
            query = decode_image(read_bytes(self.spec.query_image), QUERY_MAX_PIXELS)
            self.query_embeds = self._embed_query(self._processor_pixels(query.pixels))

    def _embed_spec_examples(self, examples) -> tuple[list[str], torch.Tensor]:
        """spec.examples (boxes drawn on images, each with its label) -> (labels, queries
        (L, D)): each image read whole and prepared as a query image (the processor, exact),
        its boxes' patches found (example_patch), a label's boxes averaged across images."""
        by_image: dict[str, list] = {}
        for example in examples:
            by_image.setdefault(example.image, []).append(example)
        labels, embeds = [], []
        for uri, drawn in by_image.items():
            image = decode_image(read_bytes(uri), QUERY_MAX_PIXELS)
            for example in drawn:
                check_query_box(example.box, image.width, image.height, f"{uri}: box ")
            class_embeds, boxes, objectness = self._patch_heads(
                self._processor_pixels(image.pixels).to(self.device, self.dtype))
            targets = torch.tensor([unit_box(ex.box, image.width, image.height)
                                    for ex in drawn], device=self.device)
            labels += [ex.label for ex in drawn]
            embeds.append(class_embeds[0, example_patch(boxes[0], targets, objectness[0])])
        return mean_by_label(labels, torch.cat(embeds))

    @torch.inference_mode()
    def _patch_heads(self, pixel_values: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """pixel_values (N, 3, S, S) -> what a drawn box's query is picked from: every
        patch's class embedding (N, P, D), box (N, P, 4) cxcywh and objectness (N, P)."""
        feats, feature_map = self._image_features(pixel_values)
        _, class_embeds = self.model.class_predictor(feats)
        return (class_embeds, self.model.box_predictor(feats, feature_map),
                self.model.objectness_predictor(feats))

    @torch.inference_mode()
    def _embed_query(self, query_pixel_values: torch.Tensor) -> torch.Tensor:
        """query pixel_values (1, 3, S, S) -> class embedding (1, 1, D) of its most object-like
        box (model.embed_image_query)."""
        feats, feature_map = self._image_features(query_pixel_values.to(self.device, self.dtype))
        query_embeds, _, _ = self.model.embed_image_query(feats, feature_map)
        return query_embeds

    def _example_image_queries(self, wanted: dict[tuple, tuple[ExampleImage, list]]
                               ) -> dict[tuple, tuple[list[str], torch.Tensor]]:
        """Queries of boxes drawn on other images than the ones labelled: {(image key,
        drawn): (example image, drawn)} -> {same key: (labels, queries (L, D))}. The ones not
        cached are prepared as this model prepares the images it labels (model_inputs:
        spec.preprocess, on the device) and embedded in one forward pass, then cached, so
        that the images a user labels one after the other with one example pay it once."""
        found, missing = {}, {}
        with self._example_lock:
            for key, item in wanted.items():
                if key in self._example_cache:
                    self._example_cache.move_to_end(key)
                    found[key] = self._example_cache[key]
                else:
                    missing[key] = item
        if not missing:
            return found
        inputs = self.model_inputs([ImageInput(image.pixels, image.width, image.height)
                                    for image, _ in missing.values()])
        class_embeds, boxes, objectness = self._patch_heads(inputs["pixel_values"])
        for i, (key, (_, drawn)) in enumerate(missing.items()):
            found[key] = label_queries(class_embeds[i], boxes[i], objectness[i], drawn)
        with self._example_lock:
            for key in missing:
                self._example_cache[key] = found[key]
            while len(self._example_cache) > EXAMPLE_IMAGE_CACHE_SIZE:
                self._example_cache.popitem(last=False)
        return found

    def parameters(self) -> dict:
        found = {"threshold": self.spec.threshold, "nms_threshold": self.spec.nms_threshold,
                 "query_image": self.spec.query_image, "preprocess": self.spec.preprocess}
        if self.spec.query_box is not None:  # set only then: older rows read as before
            found["query_box"] = list(self.spec.query_box)
        if self.spec.examples:
            found["examples"] = [ex.model_dump(mode="json") for ex in self.spec.examples]
        return found

    def preprocess(self, images: list[ImageInput], stacked: np.ndarray | None = None) -> dict:
        """Images as cpu_transform left them -> {"pixel_values": (B * T, 3, S, S) on the
        device, T model inputs an image (see _pixel_values); "examples": per image, its
        examples' boxes as (label, (x0, y0, x1, y1) in [0, 1] of the padded square of the
        image they are drawn on); "example_images": per image, that image when it is not
        the image itself (ImageInput.example_image), else None}."""
        examples = []
        for im in images:
            drawn_on = im.example_image or im
            examples.append([(ex.label, unit_box(ex.box, drawn_on.width, drawn_on.height))
                             for ex in im.examples])
        if self.spec.tiles is not None and any(examples):
            raise ValueError("examples are drawn on the whole image; this model is tiled")
        return {"pixel_values": self._pixel_values(images, stacked), "examples": examples,
                "example_images": [im.example_image for im in images]}

    @torch.inference_mode()
    def predict(self, inputs: dict) -> dict:
        """-> logits (B, P, Q) against each image's queries (Q: the most any image has, an
        image's unused ones masked), boxes (B, P, 4) cxcywh in [0, 1] of the padded square,
        names: per image, its queries' labels."""
        model = self.model
        image_feats, feature_map = self._image_features(inputs["pixel_values"])
        boxes = model.box_predictor(image_feats, feature_map)
        examples = inputs["examples"]
        if not any(examples):  # the query image's embedding for all: the documented path
            if self.query_embeds is None:
                raise ValueError("this model has no query_image: give each image examples")
            queries = self.query_embeds.to(image_feats.dtype).expand(image_feats.shape[0], -1, -1)
            logits, _ = model.class_predictor(image_feats, queries)
            return {"logits": logits, "boxes": boxes,
                    "names": [self.query_labels] * image_feats.shape[0]}
        queries, mask, names = self._image_queries(image_feats, boxes, examples,
                                                   inputs["example_images"])
        logits, _ = model.class_predictor(image_feats, queries, mask)
        return {"logits": logits, "boxes": boxes, "names": names}

    def _image_queries(self, image_feats: torch.Tensor, boxes: torch.Tensor,
                       examples: list[list], example_images: list[ExampleImage | None],
                       ) -> tuple[torch.Tensor, torch.Tensor, list[list[str]]]:
        """Per image, its query embeddings: its examples' (label_queries; drawn on itself,
        from this forward pass, or on an example image), or the query image's. -> queries
        (B, Q, D), mask (B, Q) (True: a real query), names."""
        own = [bool(drawn) and example_images[b] is None for b, drawn in enumerate(examples)]
        if any(own):  # every patch's embedding and objectness, for boxes drawn on the image
            _, class_embeds = self.model.class_predictor(image_feats)  # (B, P, D)
            objectness = self.model.objectness_predictor(image_feats)  # (B, P)
        keys = [(example_images[b].key, tuple(drawn)) if drawn and not own[b] else None
                for b, drawn in enumerate(examples)]
        drawn_elsewhere = self._example_image_queries({
            key: (example_images[b], examples[b]) for b, key in enumerate(keys) if key})
        per_image, names = [], []
        for b, drawn in enumerate(examples):
            if not drawn:
                if self.query_embeds is None:
                    raise ValueError("this model has no query_image: give each image examples")
                labels, embeds = self.query_labels, self.query_embeds[0]
            elif own[b]:
                labels, embeds = label_queries(class_embeds[b], boxes[b], objectness[b], drawn)
            else:
                labels, embeds = drawn_elsewhere[keys[b]]
            per_image.append(embeds.to(image_feats.dtype))
            names.append(labels)
        width = max(q.shape[0] for q in per_image)
        queries = image_feats.new_zeros(len(per_image), width, per_image[0].shape[-1])
        mask = torch.zeros(len(per_image), width, dtype=torch.bool, device=queries.device)
        for b, q in enumerate(per_image):
            queries[b, :q.shape[0]] = q
            mask[b, :q.shape[0]] = True
        return queries, mask, names

    def postprocess(self, raw: dict, images: list[ImageInput]) -> list[dict]:
        """Floor, threshold and NMS (see the class docstring), boxes to original pixels
        (clipped), sorted by score."""
        best_query = raw["logits"].float().max(dim=-1)
        scores = torch.sigmoid(best_query.values)  # (B, P)
        unit = box_corners(raw["boxes"].float())  # (B, P, 4) in the padded square, unit side
        best = scores.max(dim=1, keepdim=True).values
        floor = (best + EXAMPLE_BEST_EPS) * EXAMPLE_RELATIVE_FLOOR
        candidates = (scores >= self.spec.threshold) & (scores > floor)
        # Dropping boxes under the threshold and the floor first changes nothing: greedy NMS
        # lets a box suppress only lower-scored ones. One call for the batch; batched_nms
        # keeps the images apart.
        rows, cols = candidates.nonzero(as_tuple=True)
        kept = batched_nms(unit[rows, cols], scores[rows, cols], rows, self.spec.nms_threshold)
        keep = torch.zeros_like(candidates)
        keep[rows[kept], cols[kept]] = True
        corners = self._corners(raw["boxes"], images)
        # Each image's queries have names of their own: number them across the batch.
        names = [name for image_names in raw["names"] for name in image_names]
        offsets = np.cumsum([0] + [len(image_names) for image_names in raw["names"][:-1]])
        label_ids = best_query.indices + torch.as_tensor(offsets, device=scores.device)[:, None]
        ranked = self._per_image(ranked_detections(scores, keep, corners, label_ids, names))
        return [{"detections": dets} for dets in ranked]


# A drawn box's embedding comes from the patches whose predicted boxes overlap it at least
# this share of the best overlap (transformers' OWL-ViT embed_image_query uses 0.8 for its
# whole-image query box); among them, the most object-like (OWLv2's choice).
EXAMPLE_IOU_SHARE = 0.8


def label_queries(class_embeds: torch.Tensor, boxes: torch.Tensor, objectness: torch.Tensor,
                  drawn: list[tuple[str, tuple[float, ...]]]) -> tuple[list[str], torch.Tensor]:
    """One image's patches (class_embeds (P, D), boxes (P, 4) cxcywh, objectness (P,)) and
    boxes drawn on it (label, x0, y0, x1, y1 in [0, 1] of its padded square) -> (labels in
    order of first appearance, queries (L, D)): each drawn box's patch (example_patch), a
    label's patches' embeddings averaged (few-shot)."""
    targets = torch.tensor([box for _, box in drawn], device=boxes.device)
    embeds = class_embeds[example_patch(boxes, targets, objectness)]  # (E, D)
    return mean_by_label([label for label, _ in drawn], embeds)


def mean_by_label(labels: list[str], embeds: torch.Tensor) -> tuple[list[str], torch.Tensor]:
    """Embeddings (E, D) of E boxes and each box's label -> (the labels in order of first
    appearance, each one's mean embedding (L, D), in embeds' dtype)."""
    names = list(dict.fromkeys(labels))
    owner = torch.tensor([names.index(label) for label in labels], device=embeds.device)
    summed = torch.zeros(len(names), embeds.shape[-1], dtype=torch.float32,
                         device=embeds.device)
    summed.index_add_(0, owner, embeds.float())
    counts = torch.bincount(owner, minlength=len(names)).to(summed.dtype)
    return names, (summed / counts[:, None]).to(embeds.dtype)


def example_patch(boxes: torch.Tensor, targets: torch.Tensor,
                  objectness: torch.Tensor) -> torch.Tensor:
    """One image's patch for each drawn box: boxes (P, 4) cxcywh predicted per patch,
    targets (E, 4) xyxy drawn boxes, both in [0, 1] of the padded square; objectness (P,)
    logits -> (E,) patch indices. The patch picked for a target has, of the patches whose
    box's IoU with it is at least EXAMPLE_IOU_SHARE x the best IoU, the highest objectness."""
    ious = box_iou(targets.float(), box_corners(boxes.float()))  # (E, P)
    near = ious >= ious.max(dim=1, keepdim=True).values * EXAMPLE_IOU_SHARE
    return objectness.float()[None, :].masked_fill(~near, float("-inf")).argmax(dim=1)


def check_query_box(box: tuple[float, ...], width: int, height: int,
                    where: str = "query_box ") -> None:
    """ValueError unless `box` (x0, y0, x1, y1 pixels) lies inside a width x height image;
    where: what the message names."""
    if not box_fits(box, width, height):
        raise ValueError(f"{where}{list(box)} is not a box inside the {width}x{height} "
                         f"query image")


@functools.lru_cache(maxsize=256)
def _image_size(path: str, modified: float) -> tuple[int, int]:
    image = decode_image(read_bytes(path), QUERY_MAX_PIXELS)
    return image.width, image.height


def local_image_size(path: str) -> tuple[int, int]:
    """(width, height) of a local image as displayed, decoded once per version of the file:
    a served model's spec is checked again for every request (variant_spec), which must not
    decode its query image each time."""
    return _image_size(path, os.path.getmtime(path))


def unit_box(box: tuple[float, float, float, float], width: int,
             height: int) -> tuple[float, float, float, float]:
    """x0, y0, x1, y1 in pixels of a width x height image -> in [0, 1] of its padded square
    (OWLv2 pads to max(width, height), the image at the top left)."""
    side = float(max(width, height))
    return tuple(v / side for v in box)


def box_corners(boxes: torch.Tensor) -> torch.Tensor:
    """(..., 4) cx, cy, w, h -> (..., 4) x0, y0, x1, y1, same units."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def pixel_corners(boxes: torch.Tensor, images: list[ImageInput]) -> torch.Tensor:
    """boxes (B, P, 4) cxcywh in [0, 1] of each image's padded square -> (B, P, 4) xyxy float
    pixels of the original image (width/height), clipped to it."""
    return window_corners(boxes, [(0, 0, im.width, im.height) for im in images])


def window_corners(boxes: torch.Tensor, windows: list[Window]) -> torch.Tensor:
    """boxes (N, P, 4) cxcywh in [0, 1] of each input's padded square -> (N, P, 4) xyxy float
    pixels of the original image, each input being the image's pixels in windows[n] (x0, y0,
    x1, y1; the whole image: (0, 0, width, height)), clipped to that window."""
    corners = box_corners(boxes.float())
    bounds = torch.tensor(windows, dtype=torch.float32, device=corners.device)  # (N, 4)
    origin, end = bounds[:, :2], bounds[:, 2:]
    square = (end - origin).max(dim=1).values  # (N,) side of the padded square, original pixels
    corners = corners * square[:, None, None] + origin.repeat(1, 2)[:, None, :]
    return torch.minimum(torch.maximum(corners, origin.repeat(1, 2)[:, None, :]),
                         end.repeat(1, 2)[:, None, :])


def ranked_detections(scores: torch.Tensor, keep: torch.Tensor, corners: torch.Tensor,
                      label_ids: torch.Tensor, names: list[str],
                      objectness: torch.Tensor | None = None) -> list[list[dict]]:
    """Per image, the kept boxes as detection dicts, best score first (equal scores in patch
    order). A box without area (one clipped away whole: it lay in the padded square, outside
    the image) is not kept; the documented post-processing returns such boxes, and a
    random-weight model puts most of its boxes there (the demo: 479 of 1,257).

    scores, keep, label_ids: (B, P); corners: (B, P, 4) xyxy pixels, clipped; names[label_id]
    = label; objectness: optional (B, P) in [0, 1], added to each dict when given.
    """
    keep = keep & (corners[..., 2] > corners[..., 0]) & (corners[..., 3] > corners[..., 1])
    results = []
    for b in range(scores.shape[0]):
        kept_scores = scores[b][keep[b]]
        order = torch.argsort(kept_scores, descending=True, stable=True)
        s = kept_scores[order].cpu().tolist()
        ids = label_ids[b][keep[b]][order].cpu().tolist()
        xyxy = corners[b][keep[b]][order].cpu().tolist()
        dets = [{"label": names[i], "score": sc, "x0": x0, "y0": y0, "x1": x1, "y1": y1}
                for sc, i, (x0, y0, x1, y1) in zip(s, ids, xyxy)]
        if objectness is not None:
            for det, obj in zip(dets, objectness[b][keep[b]][order].cpu().tolist()):
                det["objectness"] = obj
        results.append(dets)
    return results


def padded_canvas(pixels: np.ndarray, size: int) -> np.ndarray:
    """The 'fast' OWLv2 geometry: (h, w, 3) uint8 -> (3, size, size) uint8, the image resized
    (bilinear, antialiased, in uint8) so its long side is `size`, at the top left, and the
    rest 0 (the processor pads with 0.0 before normalising, i.e. black).

    It differs from the processor (pad, gaussian blur, bilinear resize) in its resampling
    filter and on the image/padding seam; docs/preprocessing.md gives the measured deviation.
    """
    h, w = pixels.shape[:2]
    scale = size / max(h, w)
    new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    resized = F.interpolate(channels_first(pixels)[None], size=(new_h, new_w), mode="bilinear",
                            antialias=True, align_corners=False)[0]
    canvas = np.zeros((3, size, size), dtype=np.uint8)
    canvas[:, :new_h, :new_w] = resized.numpy()
    return canvas
