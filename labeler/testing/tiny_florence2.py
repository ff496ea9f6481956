"""Tiny Florence-2 checkpoint: transformers' native `Florence2ForConditionalGeneration`.

A DaViT vision tower and a BART encoder-decoder, both built from the real config classes with
tiny widths and depths, a 64x64 input, and a BART tokenizer trained offline that carries the
real Florence-2 extra tokens (the 1,000 `<loc_i>` location bins, the region/polygon markers
and `<image>`), so `Florence2Processor` builds prompts and `post_process_generation` parses
boxes exactly as with the released weights.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    BartTokenizer,
    CLIPImageProcessor,
    Florence2Config,
    Florence2ForConditionalGeneration,
    Florence2Processor,
    GenerationConfig,
)
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from labeler.testing.tokenizer import bpe_tokenizer, train_byte_level_bpe
from labeler.testing.weights import perturb_weights

IMAGE_SIZE = 64  # square model input in pixels; the real checkpoints use 768
# BART's own special tokens, in BART's id order (<s>=0, <pad>=1, </s>=2, <unk>=3).
BART_SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
# The extra tokens of the released Florence-2 tokenizer, in its order: the post-processor's
# regexes look for `<loc_i>`, `<poly>` and `<sep>`, the rest are what the decoder may emit.
FLORENCE_TOKENS = (
    ["<od>", "</od>", "<ocr>", "</ocr>"]
    + [f"<loc_{i}>" for i in range(1000)]  # the post-processor quantizes to 1000 bins
    + [
        "<cap>", "</cap>", "<ncap>", "</ncap>", "<dcap>", "</dcap>", "<grounding>",
        "</grounding>", "<seg>", "</seg>", "<sep>", "<region_cap>", "</region_cap>",
        "<region_to_desciption>", "</region_to_desciption>", "<proposal>", "</proposal>",
        "<poly>", "</poly>", "<and>",
    ]
)
# Florence2PostProcessor indexes its config by parse type and rejects a type without an entry;
# empty entries select the built-in patterns (as the released processor_config.json does).
POST_PROCESSOR_CONFIG = {
    parse_type: {}
    for parse_type in (
        "ocr", "phrase_grounding", "pure_text", "description_with_bboxes",
        "description_with_polygons", "polygons", "bboxes", "description_with_bboxes_or_polygons",
    )
}
# As in the released checkpoints, so that any max_new_tokens the service allows fits.
MAX_POSITIONS = 1024
D_MODEL = 32  # BART width; the projector maps image features to it (projection_dim)
# The default init scales (0.02) suit widths in the thousands: at width 32 every layer would
# shrink its input about tenfold, the image would barely reach the decoder's logits and
# different images would decode alike. 1/sqrt(width) keeps activations of order one.
INIT_STD = D_MODEL**-0.5


def build(out_dir: Path, seed: int = 0, **_: object) -> Path:
    """Build a tiny Florence-2 into `out_dir` (model, processor, tokenizer); returns `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    vocab, merges = train_byte_level_bpe(BART_SPECIAL_TOKENS)
    tokenizer = bpe_tokenizer(
        BartTokenizer, vocab, merges, model_max_length=MAX_POSITIONS,
        extra_special_tokens=FLORENCE_TOKENS,
        model_specific_special_tokens={"image_token": "<image>"},
    )

    bos, pad, eos = tokenizer.bos_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id
    config = Florence2Config(
        # Two DaViT stages (the real model has four) with the real first two strides, 4 then 2,
        # turn 64x64 pixels into an 8x8 grid; windows of 4 split that grid into 2x2 windows,
        # so window attention really partitions it. Widths double per stage as in DaViT,
        # with 16 channels per head and per channel group.
        vision_config=dict(
            depths=[1, 1], patch_size=[7, 3], patch_stride=[4, 2], patch_padding=[3, 1],
            patch_prenorm=[False, True], embed_dim=[16, 32], num_heads=[1, 2],
            num_groups=[1, 2], window_size=4, projection_dim=D_MODEL,
            initializer_range=INIT_STD,
        ),
        # Two layers per stack: the fewest that still pass state from layer to layer.
        text_config=dict(
            model_type="bart", vocab_size=len(tokenizer), d_model=D_MODEL,
            encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
            decoder_attention_heads=2, encoder_ffn_dim=2 * D_MODEL, decoder_ffn_dim=2 * D_MODEL,
            max_position_embeddings=MAX_POSITIONS, bos_token_id=bos, pad_token_id=pad,
            eos_token_id=eos, decoder_start_token_id=eos, tie_word_embeddings=False,
            init_std=INIT_STD,
        ),
        image_token_id=tokenizer.image_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = Florence2ForConditionalGeneration(config).eval()
    perturb_weights(model, seed)
    # BART decoding as in the released generation_config: start from </s>, force <s> next.
    model.generation_config = GenerationConfig(
        bos_token_id=bos, eos_token_id=eos, pad_token_id=pad, decoder_start_token_id=eos,
        forced_bos_token_id=bos,
    )

    # The processor inserts one <image> placeholder per image token the vision tower emits
    # (grid cells plus one pooled token); measure that count instead of deriving it.
    with torch.no_grad():
        features = model.get_image_features(torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE))
    square = {"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    image_processor = CLIPImageProcessor(
        size=square, crop_size=square, do_center_crop=False,
        image_mean=IMAGENET_DEFAULT_MEAN, image_std=IMAGENET_DEFAULT_STD,
        image_seq_length=features.pooler_output.shape[1],
    )
    processor = Florence2Processor(
        image_processor=image_processor, tokenizer=tokenizer,
        post_processor_config=POST_PROCESSOR_CONFIG,
    )

    model.save_pretrained(out_dir, safe_serialization=True)
    processor.save_pretrained(out_dir)
    return out_dir
