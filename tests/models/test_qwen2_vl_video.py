"""Qwen2-VL clip adapters vs the documented single-video usage on the same tiny checkpoint.

The tiny model writes gibberish, so the tests compare raw decoded text, which greedy
decoding makes exact. Clips differ in frame size and count, one count odd.
"""

import numpy as np
import pytest
import torch
from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

from labeler.config import TaskSpec
from labeler.models.base import ImageInput
from labeler.models.qwen2_vl_video import Qwen2VLVideoAsk, Qwen2VLVideoCaption
from labeler.testing.samples import synthetic_image

# (frames, width, height): differing sizes and frame counts; 3 frames is an odd count, which
# the processor pads to 2 temporal patches by repeating the last frame.
CLIPS = [(4, 64, 48), (2, 80, 56), (6, 56, 56), (3, 60, 40)]
MAX_NEW_TOKENS = 12  # enough for differing gibberish, short enough for a fast CPU test
ADAPTERS = {"video-caption": Qwen2VLVideoCaption, "video-ask": Qwen2VLVideoAsk}
QUESTION = "What moves in the video?"


def _spec(model_dir, task, **kw) -> TaskSpec:
    kw.setdefault("generation", {"max_new_tokens": MAX_NEW_TOKENS})
    if task == "video-ask":
        kw.setdefault("prompt", QUESTION)
    return TaskSpec(task=task, model={"family": "qwen2_vl", "source": model_dir}, **kw)


def _setup(model_dir, task, **kw):
    adapter = ADAPTERS[task](_spec(model_dir, task, **kw))
    adapter.setup(torch.device("cpu"))
    return adapter


def _inputs(clips, prompts=None):
    prompts = prompts or [None] * len(clips)
    return [ImageInput(c, c.shape[2], c.shape[1], prompt=p) for c, p in zip(clips, prompts)]


def make_clip(frames: int, width: int, height: int, seed: int) -> np.ndarray:
    """(T, h, w, 3) uint8: a different synthetic image per frame."""
    return np.stack([np.asarray(synthetic_image(width, height, seed=seed * 10 + i))
                     for i in range(frames)])


@pytest.fixture(scope="module")
def model_dir(tiny_model):
    return tiny_model("qwen2_vl")


@pytest.fixture(scope="module")
def clips():
    return [make_clip(t, w, h, seed) for seed, (t, w, h) in enumerate(CLIPS)]


@pytest.fixture(scope="module")
def reference(model_dir):
    processor = AutoProcessor.from_pretrained(model_dir)
    model = Qwen2VLForConditionalGeneration.from_pretrained(model_dir).eval()
    return processor, model


def reference_text(reference, frames: np.ndarray, prompt: str) -> str:
    """The documented usage for one video, frames given as sampled (no resampling): chat
    template, processor, greedy generate, ids trimmed of the prompt, decode."""
    processor, model = reference
    messages = [{"role": "user", "content": [{"type": "video"},
                                             {"type": "text", "text": prompt}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[text], videos=[frames], do_sample_frames=False,
                       return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
    return processor.batch_decode(out[:, inputs.input_ids.shape[1]:], skip_special_tokens=True,
                                  clean_up_tokenization_spaces=False)[0]


@pytest.mark.parametrize("task", sorted(ADAPTERS))
def test_batched_text_equals_the_documented_usage(model_dir, reference, clips, task):
    adapter = _setup(model_dir, task)
    # One row brings its own prompt, which replaces the spec's (or the default) for it alone.
    row_prompts = [None, "Name one shape.", None, None]
    batch = adapter(_inputs(clips, row_prompts))
    assert len(batch) == len(clips)
    for clip, row_prompt, ours in zip(clips, row_prompts, batch):
        prompt = row_prompt or adapter.spec.prompt or adapter.default_prompt
        assert ours == {"text": reference_text(reference, clip, prompt), "prompt": prompt}
    texts = [r["text"] for r in batch]
    assert all(texts) and len(set(texts)) == len(texts), "clips should give different text"


def test_every_frame_reaches_the_model(model_dir, clips):
    """However the checkpoint's video processor is set to sample frames, the clip's own
    frames all go in: ceil(T / 2) temporal patches per clip."""
    adapter = _setup(model_dir, "video-caption")
    video_processor = adapter.processor.video_processor
    video_processor.do_sample_frames, video_processor.num_frames = True, 2
    inputs = adapter.preprocess(_inputs(clips))
    assert inputs["video_grid_thw"][:, 0].tolist() == [-(-t // 2) for t, _, _ in CLIPS]


def test_an_odd_frame_count_repeats_the_last_frame(model_dir, clips):
    adapter = _setup(model_dir, "video-caption")
    odd = clips[3]
    padded = np.concatenate([odd, odd[-1:]])
    single, twice = adapter(_inputs([odd, padded]))
    assert single["text"] == twice["text"] and single["text"]


def test_a_row_that_is_not_a_clip_is_refused(model_dir, clips):
    adapter = _setup(model_dir, "video-caption")
    image = clips[0][0]
    with pytest.raises(ValueError, match=r"takes clips of \(T, h, w, 3\)"):
        adapter.preprocess(_inputs([clips[0]]) + [ImageInput(image, 64, 48)])


def test_check_spec_refuses_what_qwen2_vl_cannot_run(model_dir):
    with pytest.raises(ValueError, match="'video-ask' needs a prompt"):
        TaskSpec(task="video-ask", model={"family": "qwen2_vl", "source": model_dir})
    for task in ADAPTERS:
        with pytest.raises(ValueError, match="not labels"):
            _spec(model_dir, task, labels=["cat"])
        with pytest.raises(ValueError, match="query_image"):
            _spec(model_dir, task, query_image="cat.jpg")
        with pytest.raises(ValueError, match="prompt is empty"):
            _spec(model_dir, task, prompt="  ")


def test_default_prompts(model_dir, clips):
    assert Qwen2VLVideoCaption.default_prompt == "Describe this video in one sentence."
    assert Qwen2VLVideoAsk.default_prompt is None  # the spec gives the question (check_spec)
    clip = clips[0]
    row = ImageInput(clip, clip.shape[2], clip.shape[1], prompt="row prompt")
    bare = ImageInput(clip, clip.shape[2], clip.shape[1])
    caption = Qwen2VLVideoCaption(_spec(model_dir, "video-caption"))
    assert caption.prompt_for(bare) == Qwen2VLVideoCaption.default_prompt
    assert caption.prompt_for(row) == "row prompt"
    ask = Qwen2VLVideoAsk(_spec(model_dir, "video-ask"))
    assert ask.prompt_for(bare) == QUESTION
    assert ask.prompt_for(row) == "row prompt"
