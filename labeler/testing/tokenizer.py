"""Tiny byte-level BPE tokenizers trained offline, for the tiny test checkpoints.

Each family's recipe trains one of these on a few sentences and hands the vocabulary and
merges to that family's real tokenizer class, so the processors behave as with real weights.
Two styles, as the real tokenizers split text before BPE: GPT-2 style (a space becomes the
"Ġ" prefix of the next word) and CLIP style (lowercased, CLIP's own word regex, no space
marker, the last symbol of a word suffixed "</w>").

The trainer is a small pure-Python BPE with a fixed tie-break, so the same call gives the same
vocabulary and merges in every process and on every machine (the `tokenizers` BpeTrainer breaks
ties between equally frequent pairs differently from run to run).
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from pathlib import Path

from tokenizers import Regex, normalizers, pre_tokenizers

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

# The pre-tokenizer the family tokenizers apply before BPE: split on the GPT-2 regex and map
# bytes to the 256 printable byte-level symbols, a space becoming the "Ġ" prefix of a word.
PRE_TOKENIZER = pre_tokenizers.ByteLevel(add_prefix_space=False)

# CLIP's normalizer and pre-tokenizer, exactly as transformers' CLIPTokenizer (5.x) sets them:
# NFC, runs of whitespace to one space, lowercase; keep only the matches of CLIP's word regex
# (whitespace is dropped, so no "Ġ" marker), then map bytes to the byte-level symbols.
CLIP_NORMALIZER = normalizers.Sequence(
    [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
)
CLIP_PRE_TOKENIZER = pre_tokenizers.Sequence([
    pre_tokenizers.Split(
        Regex(r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]"""
              r"""|[^\s\p{L}\p{N}]+"""),
        behavior="removed", invert=True,
    ),
    pre_tokenizers.ByteLevel(add_prefix_space=False),
])


def train_byte_level_bpe(
    special_tokens: list[str],
    vocab_size: int = 400,
    corpus: list[str] | None = None,
    end_of_word_suffix: str | None = None,
    trailing_special_tokens: list[str] | None = None,
) -> tuple[dict[str, int], list[str]]:
    """Train a byte-level BPE, deterministically; returns (vocab token->id, merges as "a b").

    Ids, in this order:
    1. `special_tokens`, in the order given (so the caller controls which token is id 0:
       OWLv2 masks every query whose first id is 0);
    2. the 256 byte-level symbols (`ByteLevel.alphabet()`) sorted by code point, less any that
       is already a special token;
    3. with `end_of_word_suffix` (CLIP style, "</w>"): the suffixed form of all 256 byte-level
       symbols ("s</w>"), sorted the same way; the released CLIP vocabulary has them all too.
       The `tokenizers` BPE model looks up a word's last symbol with the suffix attached, so
       any word, in the corpus or not, then encodes without the unknown token;
    4. one token per merge, in merge order, while the vocabulary is smaller than `vocab_size`
       less the trailing tokens (a merge whose result is already a token adds no id);
    5. `trailing_special_tokens`, in the order given, as the last ids: CLIP's released
       vocabulary ends with <|startoftext|>, <|endoftext|> (49406, 49407), and CLIP-style
       text models pool each query at `input_ids.argmax(-1)`, which is then its EOS.
    Steps 1-3 and 5 are always complete, so the vocabulary has `vocab_size` ids unless the
    corpus runs out of pairs first or steps 1-3 and 5 alone already exceed it.

    Words are the corpus (default `CORPUS`) split by `split_words`, as at encoding time,
    counted with repetition. Each step merges the adjacent symbol pair with the highest count
    summed over all words; ties go to the smallest (left, right) pair in Python string order
    (code points), so no step depends on hash or thread order. Training stops early when no
    word has two symbols left.
    """
    suffix = end_of_word_suffix or ""
    vocab: dict[str, int] = {}
    for token in special_tokens:
        vocab.setdefault(token, len(vocab))
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    for symbol in alphabet:
        vocab.setdefault(symbol, len(vocab))
    if suffix:
        for symbol in alphabet:
            vocab.setdefault(symbol + suffix, len(vocab))
    words = _word_counts(corpus or CORPUS, suffix)

    trailing = trailing_special_tokens or []
    merges: list[str] = []
    while len(vocab) < vocab_size - len(trailing):
        pairs: Counter[tuple[str, str]] = Counter()
        for word, count in words.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += count
        if not pairs:
            break
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merges.append(" ".join(best))
        vocab.setdefault("".join(best), len(vocab))
        # Merging keeps a word's text, so distinct words stay distinct keys.
        words = {_merge_pair(word, best): count for word, count in words.items()}
    for token in trailing:
        if token in vocab:  # an earlier id would break the "last ids" layout
            raise ValueError(f"trailing special token {token!r} already has id {vocab[token]}")
        vocab[token] = len(vocab)
    return vocab, merges


def split_words(text: str, end_of_word_suffix: str | None = None) -> list[str]:
    """The words, as strings of byte-level symbols, that the tokenizer runs BPE on for `text`.

    Without `end_of_word_suffix`, GPT-2 style: `PRE_TOKENIZER` alone ("a cat" -> "a", "Ġcat").
    With it, CLIP style: `CLIP_NORMALIZER` then `CLIP_PRE_TOKENIZER` ("A cat!" -> "a", "cat",
    "!"). The suffix itself is not attached here."""
    if end_of_word_suffix:
        text = CLIP_NORMALIZER.normalize_str(text)
        return [word for word, _ in CLIP_PRE_TOKENIZER.pre_tokenize_str(text)]
    return [word for word, _ in PRE_TOKENIZER.pre_tokenize_str(text)]


def _word_counts(corpus: list[str], suffix: str) -> dict[tuple[str, ...], int]:
    """{word as a tuple of byte-level symbols: occurrences in `corpus`}; a word's last symbol
    carries `suffix` ("" for none, GPT-2 style; see `split_words`)."""
    counts: Counter[tuple[str, ...]] = Counter()
    for text in corpus:
        for word in split_words(text, suffix):
            counts[(*word[:-1], word[-1] + suffix)] += 1
    return dict(counts)


def _merge_pair(word: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    """`word` with every non-overlapping occurrence of `pair`, left to right, joined into one
    symbol (the order the BPE model applies a merge in at encoding time)."""
    merged: list[str] = []
    i = 0
    while i < len(word):
        if word[i:i + 2] == pair:
            merged.append(word[i] + word[i + 1])
            i += 2
        else:
            merged.append(word[i])
            i += 1
    return tuple(merged)


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
