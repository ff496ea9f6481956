"""Tiny BLIP-2 checkpoint: `Blip2ForConditionalGeneration` with an OPT language model.

A ViT vision encoder, a Q-Former and an OPT decoder, all built from the real config classes
with tiny widths and depths and a 64x64 input, plus a BlipImageProcessor and an OPT-style
byte-level BPE tokenizer (GPT2Tokenizer, `</s>` as BOS) trained offline, as in the
Salesforce/blip2-opt-* checkpoints.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    Blip2Config,
    Blip2ForConditionalGeneration,
    Blip2Processor,
    BlipImageProcessor,
    GenerationConfig,
    GPT2Tokenizer,
)

from labeler.testing.tokenizer import bpe_tokenizer, train_byte_level_bpe
from labeler.testing.weights import perturb_weights

IMAGE_SIZE = 64  # square model input in pixels; the real checkpoints use 224
PATCH_SIZE = 16  # 64 / 16 = a 4x4 patch grid (plus CLS) for the Q-Former to attend to
# Image tokens handed to the language model (the real checkpoints use 32). Measured over
# 5 different images and seeds 0-7: with 4, 4 of 80 image pairs decoded to the same text
# (noise vs gradient at seed 0 among them); with 8, 1 of 80.
NUM_QUERY_TOKENS = 8
# OPT's special tokens, in OPT's id order (<pad>=1, </s>=2).
OPT_SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>"]
HIDDEN = 32  # one width for the vision encoder, the Q-Former and the OPT decoder
# The default init scales suit widths in the thousands (0.02; the vision tower's is 1e-10, i.e.
# zero): at width 32 every layer would shrink its input about tenfold and the image would
# barely reach the logits, so every image would give the same text. 1/sqrt(width) keeps
# activations of order one through the stack.
INIT_STD = HIDDEN**-0.5


def build(out_dir: Path, seed: int = 0, **_: object) -> Path:
    """Build a tiny BLIP-2 into `out_dir` (model, processor, tokenizer); returns `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    vocab, merges = train_byte_level_bpe(OPT_SPECIAL_TOKENS)
    # As OPT's tokenizer: </s> is BOS, EOS and UNK, and prompts start with it.
    tokenizer = bpe_tokenizer(
        GPT2Tokenizer, vocab, merges, bos_token="</s>", eos_token="</s>", unk_token="</s>",
        pad_token="<pad>", add_bos_token=True,
    )
    # The processor adds the <image> token to the tokenizer itself; the model's vocabulary
    # and image_token_index are read off the tokenizer afterwards.
    processor = Blip2Processor(
        image_processor=BlipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}),
        tokenizer=tokenizer,
        num_query_tokens=NUM_QUERY_TOKENS,
    )

    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    # Two layers per tower: the fewest that still pass state from layer to layer (with the
    # default cross_attention_frequency of 2, the Q-Former's first layer attends to the image).
    config = Blip2Config(
        vision_config=dict(
            hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_hidden_layers=2,
            num_attention_heads=2, image_size=IMAGE_SIZE, patch_size=PATCH_SIZE,
            initializer_range=INIT_STD,
        ),
        qformer_config=dict(
            hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_hidden_layers=2,
            num_attention_heads=2, initializer_range=INIT_STD,
        ),
        text_config=dict(
            model_type="opt", vocab_size=len(tokenizer), hidden_size=HIDDEN,
            word_embed_proj_dim=HIDDEN, ffn_dim=2 * HIDDEN, num_hidden_layers=2,
            num_attention_heads=2, bos_token_id=eos, eos_token_id=eos, pad_token_id=pad,
            tie_word_embeddings=False, init_std=INIT_STD,
        ),
        num_query_tokens=NUM_QUERY_TOKENS,
        image_token_index=tokenizer.convert_tokens_to_ids(processor.image_token.content),
        tie_word_embeddings=False,
        initializer_range=INIT_STD,
    )
    torch.manual_seed(seed)
    model = Blip2ForConditionalGeneration(config).eval()
    perturb_weights(model, seed)
    model.generation_config = GenerationConfig(bos_token_id=eos, eos_token_id=eos, pad_token_id=pad)

    model.save_pretrained(out_dir, safe_serialization=True)
    processor.save_pretrained(out_dir)
    return out_dir
