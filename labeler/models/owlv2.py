"""OWLv2 open-vocabulary detection with a fixed vocabulary of class names.

Reference usage (transformers docs): processor(text=[labels], images=image) -> model(**inputs)
-> processor.post_process_grounded_object_detection(outputs, threshold, target_sizes). Two
things differ here, for speed, with the same numbers:
- the text queries are encoded once in setup(), not once per batch; predict() runs only the
  vision tower and the heads;
- post-processing uses the *padded square* size max(h, w) as the target size: OWLv2 pads
  every image to a square (bottom and right) before resizing, so its normalised boxes are
  relative to that square. Passing (h, w) as the documentation's example does would stretch
  every box of a non-square image.
Boxes are then clipped to the image.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F

from labeler.models.base import Adapter, ImageInput, resolve_dtype
from labeler.storage import resolve_model_source


class Owlv2Detector(Adapter):
    """task=detect, family=owlv2. Output per image: {"detections": [{label, score, x0..y1}]}."""

    @classmethod
    def check_spec(cls, spec) -> None:
        if not spec.labels:
            raise ValueError("task 'detect' needs at least one label (labels: [cat, dog])")
        if spec.prompt:
            raise ValueError("OWLv2 detect takes class names in labels, not a prompt")

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
        self.revision = getattr(self.model.config, "_commit_hash", None) or self.revision
        self.labels = list(self.spec.labels)
        self.query_embeds, self.query_mask = self._encode_queries(self.labels)

    @torch.inference_mode()
    def _encode_queries(self, labels: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Text queries -> (embeddings (Q, D), valid mask (Q,)), as the model's forward makes
        them: projected pooled text output, L2-normalised; a query whose first token is id 0
        is padding."""
        text = self.processor(text=[labels], return_tensors="pt").to(self.device)
        pooled = self.model.owlv2.get_text_features(
            input_ids=text["input_ids"], attention_mask=text["attention_mask"]
        ).pooler_output
        embeds = pooled / torch.linalg.norm(pooled, ord=2, dim=-1, keepdim=True)
        return embeds, text["input_ids"][:, 0] > 0

    def cpu_transform(self, pixels: np.ndarray) -> np.ndarray | None:
        """Decoded (h, w, 3) uint8 -> (3, S, S) model input, when the CPU stage should make it.

        fast: resize + pad here; normalised here too for CPU actors, left uint8 (4x less to
        move) for GPU actors, which normalise on the device. processor: run here for CPU
        actors (it parallelises over decode tasks); GPU actors run it on the device (None).
        """
        if self.spec.preprocess == "fast":
            canvas = padded_canvas(pixels, self.input_size)
            return self._normalize(torch.from_numpy(canvas)).numpy() if self.model_on_cpu else canvas
        if self.model_on_cpu:
            return self.processor.image_processor(
                images=[_as_chw_tensor(pixels)], return_tensors="pt")["pixel_values"][0].numpy()
        return None

    def _normalize(self, canvas: torch.Tensor) -> torch.Tensor:
        """uint8 (..., 3, S, S) -> float32 normalised, on the canvas's device."""
        mean = self.mean255.to(canvas.device).view(3, 1, 1)
        std = self.std255.to(canvas.device).view(3, 1, 1)
        return canvas.float().sub_(mean).div_(std)

    def preprocess(self, images: list[ImageInput], stacked: np.ndarray | None = None) -> torch.Tensor:
        """Images as cpu_transform left them -> pixel_values (B, 3, S, S) on the device."""
        if self.spec.preprocess == "fast" or self.model_on_cpu:
            if stacked is None:
                stacked = np.stack([im.pixels for im in images])
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
                batch = torch.from_numpy(stacked).to(self.device)
            pixels = self._normalize(batch) if batch.dtype == torch.uint8 else batch
        else:
            tensors = [_as_chw_tensor(im.pixels) for im in images]
            pixels = self.processor.image_processor(
                images=tensors, return_tensors="pt", device=self.device)["pixel_values"]
        return pixels.to(self.device, self.dtype)

    @torch.inference_mode()
    def predict(self, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        """-> logits (B, P, Q), boxes (B, P, 4) cxcywh in [0, 1] of the padded square,
        objectness logits (B, P); P = patches, Q = labels."""
        model = self.model
        feature_map, _ = model.image_embedder(pixel_values=pixel_values)
        batch, grid_h, grid_w, dim = feature_map.shape
        image_feats = feature_map.reshape(batch, grid_h * grid_w, dim)
        queries = self.query_embeds.to(image_feats.dtype)[None].expand(batch, -1, -1)
        mask = self.query_mask[None].expand(batch, -1)
        logits, _ = model.class_predictor(image_feats, queries, mask)
        boxes = model.box_predictor(image_feats, feature_map)
        objectness = model.objectness_predictor(image_feats)
        return {"logits": logits, "boxes": boxes, "objectness": objectness}

    def postprocess(self, raw: dict[str, torch.Tensor], images: list[ImageInput]) -> list[dict]:
        """Best label per box, threshold, boxes to original pixels (clipped), sorted by score."""
        best = raw["logits"].float().max(dim=-1)
        scores, label_ids = torch.sigmoid(best.values), best.indices  # (B, P)
        boxes = raw["boxes"].float()
        cx, cy, w, h = boxes.unbind(-1)
        corners = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)
        sizes = torch.tensor([[im.width, im.height] for im in images], dtype=torch.float32,
                             device=corners.device)  # (B, 2)
        square = sizes.max(dim=1).values  # (B,) side of the padded square, original pixels
        corners = corners * square[:, None, None]
        limits = sizes.repeat(1, 2)[:, None, :]  # (B, 1, 4): w, h, w, h
        corners = torch.minimum(corners.clamp(min=0), limits)

        keep = scores > self.spec.threshold
        results = []
        for b in range(len(images)):
            kept_scores = scores[b][keep[b]]
            order = torch.argsort(kept_scores, descending=True)
            s = kept_scores[order].cpu().tolist()
            ids = label_ids[b][keep[b]][order].cpu().tolist()
            xyxy = corners[b][keep[b]][order].cpu().tolist()
            results.append({"detections": [
                {"label": self.labels[i], "score": sc, "x0": x0, "y0": y0, "x1": x1, "y1": y1}
                for sc, i, (x0, y0, x1, y1) in zip(s, ids, xyxy)
            ]})
        return results


def _as_chw_tensor(pixels: np.ndarray) -> torch.Tensor:
    """(h, w, 3) uint8 array -> (3, h, w) uint8 tensor view, without a copy."""
    with warnings.catch_warnings():
        # Arrays from Ray's object store are read-only; nothing here writes to them.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(pixels).permute(2, 0, 1)


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
    resized = F.interpolate(_as_chw_tensor(pixels)[None], size=(new_h, new_w), mode="bilinear",
                            antialias=True, align_corners=False)[0]
    canvas = np.zeros((3, size, size), dtype=np.uint8)
    canvas[:, :new_h, :new_w] = resized.numpy()
    return canvas
