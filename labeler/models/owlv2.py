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

    def setup(self, device: torch.device) -> None:
        from transformers import Owlv2ForObjectDetection, Owlv2Processor

        source = resolve_model_source(self.spec.model.source)
        kwargs = {"revision": self.spec.model.revision} if self.spec.model.revision else {}
        self.device = device
        self.dtype = resolve_dtype(self.spec.model.dtype, device)
        self.processor = Owlv2Processor.from_pretrained(source, **kwargs)
        self.model = Owlv2ForObjectDetection.from_pretrained(source, dtype=self.dtype, **kwargs)
        self.model.to(device).eval()
        self.revision = getattr(self.model.config, "_commit_hash", None) or self.revision
        image_size = self.processor.image_processor.size
        self.input_size = int(image_size["height"])
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

    def preprocess(self, images: list[ImageInput]) -> torch.Tensor:
        """-> pixel_values (B, 3, S, S) on the device, S the model input size."""
        if self.spec.preprocess == "fast":
            pixels = fast_pixel_values(
                [im.pixels for im in images], self.input_size,
                self.processor.image_processor.image_mean,
                self.processor.image_processor.image_std, self.device,
            )
        else:
            tensors = [_as_chw_tensor(im.pixels) for im in images]
            pixels = self.processor.image_processor(
                images=tensors, return_tensors="pt", device=self.device
            )["pixel_values"]
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


def fast_pixel_values(
    images: list[np.ndarray], size: int, mean: list[float], std: list[float],
    device: torch.device,
) -> torch.Tensor:
    """OWLv2 inputs by batched torch ops: uint8 antialiased resize of each image so its long
    side is `size`, pad bottom/right with 0.0 (in [0, 1] units, as the processor pads), and
    normalise. -> (B, 3, size, size) float32.

    It differs from the processor (pad, gaussian blur, bilinear resize) in its resampling
    filter and at the image/padding edge; docs/preprocessing.md gives the measured deviation.
    """
    # Normalisation folded into uint8 units: (v / 255 - mean) / std == (v - 255 mean) / (255 std).
    mean255 = (torch.tensor(mean, device=device) * 255.0).view(3, 1, 1)
    std255 = (torch.tensor(std, device=device) * 255.0).view(3, 1, 1)
    pad_value = (-mean255 / std255)  # 0.0 in [0, 1] units, normalised, per channel
    out = torch.empty(len(images), 3, size, size, device=device)
    for i, img in enumerate(images):
        h, w = img.shape[:2]
        scale = size / max(h, w)
        new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
        chw = _as_chw_tensor(img)[None].to(device)
        if device.type != "cpu":  # uint8 antialiased interpolation is a CPU kernel only
            chw = chw.float()
        resized = F.interpolate(chw, size=(new_h, new_w), mode="bilinear", antialias=True,
                                align_corners=False)[0]
        # Write the image and fill only the padding: the canvas is ~11 MB per image at 960 px,
        # and touching it once instead of twice is most of this function's cost on a CPU.
        out[i, :, :new_h, :new_w].copy_(resized).sub_(mean255).div_(std255)
        out[i, :, new_h:, :].copy_(pad_value.expand(3, size - new_h, size))
        out[i, :, :new_h, new_w:].copy_(pad_value.expand(3, new_h, size - new_w))
    return out
