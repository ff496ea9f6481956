"""Qwen2-VL on video clips: a caption, or the answer to a question, per clip.

Input: ImageInput.pixels is one clip, (T, h, w, 3) uint8 RGB frames in time order, all of
one size (width/height); the clips of a batch may differ in size and in T. Output per clip:
{"text": the answer, "prompt": the prompt used}; no confidence, as for the image caption
task. The job writes the clip's start and end times next to it.

Reference usage (transformers Qwen2-VL docs), which the batch follows as qwen2_vl does for
images: messages [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text":
prompt}]}] -> processor.apply_chat_template(messages, add_generation_prompt=True,
tokenize=False) -> processor(text=[...], videos=[frames], do_sample_frames=False,
padding=True, return_tensors="pt") -> model.generate -> generated ids trimmed of the prompt
-> processor.batch_decode(..., skip_special_tokens=True, clean_up_tokenization_spaces=False).
Batching is exact for the same reasons as for images (left padding, attention mask, the
multimodal rope counting unmasked tokens only): video tokens get (temporal patch, row,
column) positions per row.

What the model sees of a clip:
- Every frame, in order: the job samples them (ClipSpec.fps), so the processor is told
  do_sample_frames=False, whatever the checkpoint's video config says (with True it would
  pick its own frames by fps or num_frames). Qwen2-VL's positions carry frame order, not
  time: the frame rate does not reach the model.
- Frames in pairs: the vision tower embeds 2 consecutive frames as one temporal patch
  (temporal_patch_size 2); an odd T is padded by repeating the last frame, so a clip is
  ceil(T / 2) temporal patches.
- One size per clip: all frames are resized alike (bicubic, aspect kept) to multiples of 28
  pixels, the pixel count clamped to the video processor's size (min/max pixels;
  Qwen2-VL-*-Instruct ship min_pixels 3136 and max_pixels 12,845,056 in
  preprocessor_config.json, which the video processor reads when a checkpoint has no video
  config of its own), so frames already scaled to a long side of ClipSpec.max_side = 448
  keep their size: a 1080p frame arrives as 448x252 and is seen at 448x252, 16 x 9 = 144
  tokens per temporal patch, 720 tokens for a 10-frame clip. Where the checkpoint sets cap_pixels_per_frame (qwen-vl-utils' bound on
  a whole video; unset, transformers warns once and leaves it off), a frame's cap also
  shrinks as T grows: it binds beyond 900 frames of 448x448, 1600 of 448x252.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from labeler.models.base import ImageInput, channels_first
from labeler.models.qwen2_vl import Qwen2VLGenerator


class Qwen2VLVideoGenerator(Qwen2VLGenerator):
    """A prompted Qwen2-VL task on clips whose output is the generated text."""

    media = "video"

    def vision_inputs(self, images: list[ImageInput],
                      stacked: np.ndarray | None = None) -> dict[str, Any]:
        """The processor's keyword arguments for the batch's clips: videos=[(T, 3, h, w)],
        every frame kept (no resampling); a GPU actor's on its device, with the processor's
        `device`, as processor_images hands images over. ValueError for a row that is not a
        clip."""
        for im in images:
            shape = im.pixels.shape
            if len(shape) != 4 or shape[0] == 0 or shape[-1] != 3:
                raise ValueError(f"Qwen2-VL {self.task_name} takes clips of (T, h, w, 3) RGB "
                                 f"frames, T >= 1; got pixels of shape {shape}")
        clips = [channels_first(im.pixels) for im in images]
        if self.model_on_cpu:
            return {"videos": clips, "do_sample_frames": False}
        return {"videos": [clip.to(self.device) for clip in clips], "do_sample_frames": False,
                "device": self.device}


class Qwen2VLVideoCaption(Qwen2VLVideoGenerator):
    """task=video-caption, family=qwen2_vl: one caption per clip."""

    task_name = "video-caption"
    default_prompt = "Describe this video in one sentence."


class Qwen2VLVideoAsk(Qwen2VLVideoGenerator):
    """task=video-ask, family=qwen2_vl: a free question or instruction about each clip.

    The spec must give the prompt (the question), as for the image task 'ask'; a row's own
    prompt replaces it.
    """

    task_name = "video-ask"

    @classmethod
    def check_spec(cls, spec) -> None:
        super().check_spec(spec)
        if spec.prompt is None:
            raise ValueError("task 'video-ask' needs a prompt: the question to ask about each "
                             "clip (prompt: 'What is the person doing?'); a row's own prompt "
                             "replaces it")
