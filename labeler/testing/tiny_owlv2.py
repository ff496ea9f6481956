"""Tiny OWLv2 checkpoint: real `Owlv2Config` classes, tiny width and depth, seeded weights.

`image_size` is an option because two uses need different sizes: tests use a small input
(fast), the benchmark uses the real 960x960 input so that preprocessing costs what it costs
for the real model.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    CLIPTokenizer,
    Owlv2Config,
    Owlv2ForObjectDetection,
    Owlv2ImageProcessor,
    Owlv2Processor,
)

from labeler.testing.tokenizer import bpe_tokenizer, train_byte_level_bpe
from labeler.testing.weights import perturb_weights

# The processor pads every query to this many tokens, so the text model's position table
# must be exactly this long (as in the real checkpoints, which use 16).
MAX_QUERY_TOKENS = 16
PATCH_SIZE = 16  # the B/16 patch size, so patch counts match the real base model
# 256 byte-level symbols ("!" first) + their 256 "</w>" forms + BOS and EOS = 514 ids without
# merges; 640 leaves room for 126 merges (the corpus has 167).
VOCAB_SIZE = 640
# Laid out as the released CLIP vocabulary: "!" is id 0 and the pad token (the model treats a
# query whose first id is 0 as padding, so BOS must not be id 0); BOS and EOS are the last two
# ids (vocab_size - 2, vocab_size - 1), because the text model pools each query at
# `input_ids.argmax(-1)`, which must be its EOS as with the real weights.
PAD_TOKEN, BOS_TOKEN, EOS_TOKEN = "!", "<|startoftext|>", "<|endoftext|>"


def build(out_dir: Path, seed: int = 0, image_size: int = 96, vision_heads: int = 2,
          vision_width: int = 32, **_: object) -> Path:
    """Build a tiny OWLv2 detector into `out_dir`; returns `out_dir`.

    image_size: the square model input in pixels (a multiple of 16); 960 for the real base model.
    vision_heads: attention heads of the vision tower. At 960 px its eager attention is a
        3601x3601 matrix per head, most of the tiny model's CPU time; benchmarks that measure
        the pipeline around the model use 1.
    vision_width: hidden size of the vision tower (attention cost grows with it).
    """
    if image_size % PATCH_SIZE:
        raise ValueError(f"image_size must be a multiple of {PATCH_SIZE}, got {image_size}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    vocab, merges = train_byte_level_bpe(
        [PAD_TOKEN], vocab_size=VOCAB_SIZE, end_of_word_suffix="</w>",
        trailing_special_tokens=[BOS_TOKEN, EOS_TOKEN],
    )
    tokenizer = bpe_tokenizer(CLIPTokenizer, vocab, merges, bos_token=BOS_TOKEN,
                              eos_token=EOS_TOKEN, unk_token=EOS_TOKEN, pad_token=PAD_TOKEN,
                              model_max_length=MAX_QUERY_TOKENS)
    processor = Owlv2Processor(
        image_processor=Owlv2ImageProcessor(size={"height": image_size, "width": image_size}),
        tokenizer=tokenizer,
    )

    config = Owlv2Config(
        text_config=dict(
            vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
            num_attention_heads=2, max_position_embeddings=MAX_QUERY_TOKENS,
            bos_token_id=vocab[BOS_TOKEN], eos_token_id=vocab[EOS_TOKEN],
            pad_token_id=vocab[PAD_TOKEN],
        ),
        vision_config=dict(
            hidden_size=vision_width, intermediate_size=2 * vision_width, num_hidden_layers=1,
            num_attention_heads=vision_heads, image_size=image_size, patch_size=PATCH_SIZE,
        ),
        projection_dim=32,
    )
    torch.manual_seed(seed)
    model = Owlv2ForObjectDetection(config).eval()
    perturb_weights(model, seed)
    # Random box-head outputs are large enough to saturate the sigmoid (every box collapses to
    # a line on the image border). Shrinking the last layer leaves boxes near their grid-cell
    # prior (about one patch, centred on it) with input-dependent offsets, as trained ones are.
    with torch.no_grad():
        model.box_head.dense2.weight.mul_(0.05)
        model.box_head.dense2.bias.mul_(0.05)

    model.save_pretrained(out_dir, safe_serialization=True)
    processor.save_pretrained(out_dir)
    return out_dir
