"""Tiny Qwen2-VL checkpoint: real `Qwen2VLConfig` classes, tiny width and depth, seeded weights.

The processor is the full `Qwen2VLProcessor` (image processor, video processor, Qwen2
tokenizer, the real Qwen2-VL chat template), so `AutoProcessor.from_pretrained` on the folder
gives what it gives for the real model. Images and video frames are resized to at most 16
cells of 28x28 pixels, so one image is at most 16 tokens and generation runs fast on a CPU.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    GenerationConfig,
    Qwen2Tokenizer,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessor,
    Qwen2VLProcessor,
    Qwen2VLVideoProcessor,
)

from labeler.testing.tokenizer import bpe_tokenizer, train_byte_level_bpe
from labeler.testing.weights import perturb_weights

# In the order of the real tokenizer's added tokens. <|endoftext|> is the pad token, the
# chat tokens frame turns, the vision tokens are what the processor expands per image/video
# and the box/object-ref tokens are what grounding prompts and answers use.
SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>",
    "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>", "<|box_end|>",
    "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>",
]

# The chat template of Qwen/Qwen2-VL-*-Instruct, verbatim.
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# The real model's patch geometry: 14x14 patches, 2x2 of them merged into one LLM token, 2
# frames per temporal patch. One LLM token therefore covers a 28x28 cell of the image.
PATCH_SIZE, MERGE_SIZE, TEMPORAL_PATCH_SIZE = 14, 2, 2
CELL = PATCH_SIZE * MERGE_SIZE
# Images and video frames are resized to between 4 and 16 cells (56x56 to 112x112 pixels for
# a square): 4-16 tokens per image and per pair of frames, instead of up to 1280 and 768.
MIN_PIXELS, MAX_PIXELS = 4 * CELL * CELL, 16 * CELL * CELL

# The vision merger projects to the text width, so the vision `hidden_size` is this too.
TEXT_HIDDEN, TEXT_HEADS = 64, 4  # head_dim 16
# Multimodal RoPE splits each head's rotary half (head_dim/2 = 8 frequencies) between the
# temporal, height and width position ids; the real 7B split is [16, 24, 24] of 64.
MROPE_SECTION = [2, 3, 3]
# Weight init std for both towers (the library default is 0.02). At 0.02 the image hardly
# moves the logits: a noise image and a gradient gave the same 12 greedy tokens for seed 1.
# At 0.1 they differ from the first token (seeds 0-5 tried).
INIT_STD = 0.1


def build(out_dir: Path, seed: int = 0, **_: object) -> Path:
    """Build a tiny Qwen2-VL into `out_dir`; returns `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    vocab, merges = train_byte_level_bpe(SPECIAL_TOKENS)
    tokenizer = bpe_tokenizer(
        Qwen2Tokenizer, vocab, merges,
        extra_special_tokens=SPECIAL_TOKENS[1:],  # <|endoftext|> is already unk/eos/pad
    )
    geometry = dict(
        min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS, patch_size=PATCH_SIZE,
        merge_size=MERGE_SIZE, temporal_patch_size=TEMPORAL_PATCH_SIZE,
    )
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(**geometry),
        # The reference per-frame pixel cap (qwen-vl-utils); set so the processor does not warn.
        video_processor=Qwen2VLVideoProcessor(**geometry, cap_pixels_per_frame=True),
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
    )

    pad_id, im_end_id = vocab["<|endoftext|>"], vocab["<|im_end|>"]
    config = Qwen2VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=TEXT_HIDDEN, intermediate_size=128,
            num_hidden_layers=2, num_attention_heads=TEXT_HEADS, num_key_value_heads=2,
            # Room for the prompt plus the image/video tokens plus what the tests generate.
            max_position_embeddings=512,
            rope_parameters={  # rope_theta as in the real checkpoints
                "rope_type": "default", "rope_theta": 1e6, "mrope_section": MROPE_SECTION,
            },
            bos_token_id=pad_id, eos_token_id=im_end_id, pad_token_id=pad_id,
            initializer_range=INIT_STD,
        ),
        vision_config=dict(
            depth=2, embed_dim=32, num_heads=2, mlp_ratio=2, hidden_size=TEXT_HIDDEN,
            patch_size=PATCH_SIZE, spatial_merge_size=MERGE_SIZE,
            temporal_patch_size=TEMPORAL_PATCH_SIZE, initializer_range=INIT_STD,
        ),
        image_token_id=vocab["<|image_pad|>"], video_token_id=vocab["<|video_pad|>"],
        vision_start_token_id=vocab["<|vision_start|>"],
        vision_end_token_id=vocab["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config).eval()
    perturb_weights(model, seed)
    # Greedy decoding that stops at the end of the assistant turn, as the real checkpoint's.
    model.generation_config = GenerationConfig(
        bos_token_id=pad_id, eos_token_id=[im_end_id, pad_id], pad_token_id=pad_id,
        do_sample=False,
    )

    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir
