"""Tiny Ovis2 checkpoint: transformers' native `Ovis2Config` classes, tiny sizes, seeded weights.

The processor is the real `Ovis2Processor` (tiling image processor, Qwen2 tokenizer with the
Ovis image-indicator tokens, the chat template of the converted `-hf` checkpoints). Tiles are
112x112 and an image is cut into at most 4 of them (plus a thumbnail), so one image is at
most 80 visual tokens and generation runs fast on a CPU.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    GenerationConfig,
    Ovis2Config,
    Ovis2ForConditionalGeneration,
    Ovis2ImageProcessor,
    Ovis2Processor,
    Qwen2Tokenizer,
)

from labeler.testing.tokenizer import bpe_tokenizer, train_byte_level_bpe
from labeler.testing.weights import perturb_weights

# The visual indicators in the order Ovis2 indexes them: the model embeds indicator i (of
# `visual_indicator_token_ids`) with the i-th of the last 5 rows of its visual vocabulary.
VISUAL_INDICATORS = ["<IMG_START>", "<IMG_GRID>", "<IMG_COL>", "<IMG_ROW>", "<IMG_END>"]
# <|endoftext|> is the pad token, the chat tokens frame turns, `<image>` is what the chat
# template writes per image and the processor expands into <IMG_ATOM> runs and indicators.
SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<IMG_ATOM>", *VISUAL_INDICATORS,
]

# The chat template of the converted checkpoints (thisisiron/Ovis2-*-hf), verbatim.
CHAT_TEMPLATE = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}{{ '<image>\n' }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{{'<|im_end|>\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{'<|im_start|>assistant\n' }}{% endif %}"
)

# The real patch size (14) and hidden stride (2x2 patches per visual token), on a 112x112
# tile instead of 448x448: 8x8 patches, 4x4 = 16 visual tokens per tile instead of 256.
TILE_SIZE, PATCH_SIZE, HIDDEN_STRIDE = 112, 14, 2
MAX_TILES = 4  # the real processor allows 12; 4 still exercises the grid layout
VISUAL_VOCAB = 64  # rows of the visual embedding table (real: 65536); 5 are indicators
TEXT_HIDDEN = 64  # the visual embedding table has this width too
# Weight init std for both towers (the library default is 0.02). At 0.02 the image hardly
# moves the logits: a noise image and a gradient gave the same first 10 greedy tokens for
# seed 0. At 0.1 they differ by the second token (seeds 0-4 tried).
INIT_STD = 0.1


def build(out_dir: Path, seed: int = 0, **_: object) -> Path:
    """Build a tiny Ovis2 into `out_dir`; returns `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    vocab, merges = train_byte_level_bpe(SPECIAL_TOKENS)
    tokenizer = bpe_tokenizer(
        Qwen2Tokenizer, vocab, merges,
        extra_special_tokens=SPECIAL_TOKENS[1:],  # <|endoftext|> is already unk/eos/pad
    )

    pad_id, im_end_id = vocab["<|endoftext|>"], vocab["<|im_end|>"]
    config = Ovis2Config(
        text_config=dict(
            model_type="qwen2", vocab_size=len(tokenizer), hidden_size=TEXT_HIDDEN,
            intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2,
            # Room for the prompt plus up to 80 visual tokens plus what the tests generate.
            max_position_embeddings=512,
            bos_token_id=pad_id, eos_token_id=im_end_id, pad_token_id=pad_id,
            initializer_range=INIT_STD,
        ),
        vision_config=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            image_size=TILE_SIZE, patch_size=PATCH_SIZE, hidden_stride=HIDDEN_STRIDE,
            vocab_size=VISUAL_VOCAB, initializer_range=INIT_STD,
        ),
        image_token_id=vocab["<IMG_ATOM>"],
        visual_indicator_token_ids=[vocab[token] for token in VISUAL_INDICATORS],
        vocab_size=len(tokenizer), hidden_size=TEXT_HIDDEN, tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = Ovis2ForConditionalGeneration(config).eval()
    perturb_weights(model, seed)
    # Greedy decoding that stops at the end of the assistant turn.
    model.generation_config = GenerationConfig(
        bos_token_id=pad_id, eos_token_id=[im_end_id, pad_id], pad_token_id=pad_id,
        do_sample=False,
    )

    processor = Ovis2Processor(
        image_processor=Ovis2ImageProcessor(
            size={"height": TILE_SIZE, "width": TILE_SIZE}, crop_to_patches=True,
            max_patches=MAX_TILES,
        ),
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
        image_seq_length=_visual_tokens_per_tile(model),
    )

    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


@torch.no_grad()
def _visual_tokens_per_tile(model: Ovis2ForConditionalGeneration) -> int:
    """How many visual tokens the vision tower emits for one tile (the processor's count)."""
    tile = torch.zeros(1, 3, TILE_SIZE, TILE_SIZE)
    return model.get_image_features(pixel_values=tile).pooler_output.shape[1]
