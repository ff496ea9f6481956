"""Tiny byte-level BPE tokenizers trained offline, for the tiny test checkpoints.

Each family's recipe trains one of these on a few sentences and hands the vocabulary and
merges to that family's real tokenizer class, so the processors behave as with real weights.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

# A few sentences of the kind labeling prompts and captions are made of. The exact text only
# decides which merges exist; it is fixed so that every build gives the same vocabulary.
CORPUS = [
    "a photo of a cat", "a photo of a dog", "a picture of a person riding a bicycle",
    "two cats sitting on a red sofa", "a dog running in the green park",
    "describe the image in detail", "what is in the image?", "read all the text in the image",
    "the car is parked next to the tree", "a man and a woman walking on the street",
    "an image of a bird flying over the blue sea", "street sign with white letters",
    "Question: how many people are there? Answer:", "locate the objects in the picture",
    "OCR the text, caption the scene, detect every object", "0 1 2 3 4 5 6 7 8 9 , . ( )",
]


def train_byte_level_bpe(
    special_tokens: list[str],
    vocab_size: int = 400,
    corpus: list[str] | None = None,
    end_of_word_suffix: str | None = None,
) -> tuple[dict[str, int], list[str]]:
    """Train a byte-level BPE; returns (vocab token->id, merges as "a b" strings).

    special_tokens get the first ids, in the order given (so the caller controls which
    token is id 0: OWLv2 masks every query whose first id is 0). CLIP-style tokenizers
    (OWLv2's) mark word ends with `end_of_word_suffix="</w>"`.
    """
    suffix = end_of_word_suffix or ""  # tokenizers wants a string, "" meaning none
    tok = Tokenizer(models.BPE(end_of_word_suffix=suffix))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
        end_of_word_suffix=suffix,
    )
    tok.train_from_iterator(corpus or CORPUS, trainer=trainer)
    model = json.loads(tok.to_str())["model"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    return dict(model["vocab"]), merges


def write_vocab_and_merges(
    directory: Path, vocab: dict[str, int], merges: list[str]
) -> tuple[Path, Path]:
    """Write GPT-2 style `vocab.json` and `merges.txt`; returns their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    vocab_file, merges_file = directory / "vocab.json", directory / "merges.txt"
    vocab_file.write_text(json.dumps(vocab, ensure_ascii=False))
    merges_file.write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return vocab_file, merges_file


def bpe_tokenizer(tokenizer_class: type, vocab: dict[str, int], merges: list[str], **kwargs):
    """An instance of a transformers BPE tokenizer class (CLIP, GPT-2, BART, Qwen2, ...)
    made from a trained vocabulary and merges, passed as the `vocab` / `merges` files those
    classes read; the files live in a temporary folder only while the tokenizer loads them."""
    with tempfile.TemporaryDirectory() as folder:
        vocab_file, merges_file = write_vocab_and_merges(Path(folder), vocab, merges)
        return tokenizer_class(vocab=str(vocab_file), merges=str(merges_file), **kwargs)
