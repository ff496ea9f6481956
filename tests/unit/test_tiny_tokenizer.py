"""The tiny checkpoints' BPE trainer is deterministic, and so are the checkpoints built on it.

Two builds of every family, one in this process and one in a subprocess with another hash
seed, must give byte-identical folders (tokenizer files and weights alike); the trainer must
follow its documented id layout and tie-break; the tokenizers it yields must round-trip and
compress the corpus. The CLIP-style (OWLv2) tokenizer must split words as CLIPTokenizer does,
map any word to known tokens, use every merge it has, and lay out its ids as the released
vocabulary does (BOS and EOS last), so that the text model pools each query at its EOS.
"""

from __future__ import annotations

import json
import os
import string
import subprocess
import sys
from pathlib import Path

import pytest
from tokenizers import Tokenizer, pre_tokenizers

from labeler.testing import FAMILIES
from labeler.testing.tiny_owlv2 import BOS_TOKEN, EOS_TOKEN, MAX_QUERY_TOKENS, PAD_TOKEN
from labeler.testing.tiny_owlv2 import VOCAB_SIZE as OWLV2_VOCAB_SIZE
from labeler.testing.tokenizer import CORPUS, split_words, train_byte_level_bpe

ALPHABET = sorted(pre_tokenizers.ByteLevel.alphabet())
CLIP_TRAILING = [BOS_TOKEN, EOS_TOKEN]  # as the OWLv2 recipe passes them, after [PAD_TOKEN]


@pytest.fixture(scope="module")
def subprocess_builds(tmp_path_factory) -> Path:
    """Every family built by another Python process, with another hash seed than this one's,
    into `root/<family>`; returns root."""
    root = tmp_path_factory.mktemp("tiny_other_process")
    # Any fixed seed differs from this process's (random unless the variable pins it).
    seed = "2" if os.environ.get("PYTHONHASHSEED") == "1" else "1"
    env = {**os.environ, "PYTHONHASHSEED": seed, "HF_HUB_OFFLINE": "1"}
    code = "import sys; from labeler.testing import build_tiny_models; build_tiny_models(sys.argv[1])"
    subprocess.run([sys.executable, "-c", code, str(root)], env=env, check=True, timeout=300)
    return root


def test_training_twice_gives_the_same_vocab_and_merges():
    for specials, suffix, size, trailing in (
            ([PAD_TOKEN], "</w>", OWLV2_VOCAB_SIZE, CLIP_TRAILING),
            (["<s>", "<pad>", "</s>", "<unk>"], None, 400, None)):
        kwargs = dict(vocab_size=size, end_of_word_suffix=suffix, trailing_special_tokens=trailing)
        first = train_byte_level_bpe(specials, **kwargs)
        assert train_byte_level_bpe(specials, **kwargs) == first
        vocab, merges = first
        assert len(vocab) == size and len(merges) > 100  # the corpus has room for both sizes


@pytest.mark.parametrize("family", FAMILIES)
def test_two_builds_are_byte_identical(family, tiny_model, subprocess_builds):
    here, there = Path(tiny_model(family)), subprocess_builds / family
    names = sorted(path.name for path in here.iterdir())
    assert names == sorted(path.name for path in there.iterdir())
    assert "tokenizer.json" in names and "model.safetensors" in names
    for name in names:  # tokenizer and processor files, configs and the weights alike
        assert (here / name).read_bytes() == (there / name).read_bytes(), name


def test_special_tokens_take_the_first_ids_in_the_given_order():
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    vocab, _ = train_byte_level_bpe(specials)
    assert [vocab[token] for token in specials] == [0, 1, 2]
    assert [vocab[symbol] for symbol in ALPHABET] == list(range(3, 3 + 256))

    # A special token that is also a byte-level symbol keeps the id it is given, and the rest
    # of the alphabet follows, sorted, with no gap; then all 256 symbols with the suffix, that
    # symbol's included, sorted the same way.
    vocab, _ = train_byte_level_bpe(["<s>", "a"], end_of_word_suffix="</w>")
    assert [vocab["<s>"], vocab["a"]] == [0, 1]
    rest = [symbol for symbol in ALPHABET if symbol != "a"]
    assert [vocab[symbol] for symbol in rest] == list(range(2, 2 + len(rest)))
    suffixed = [symbol + "</w>" for symbol in ALPHABET]
    assert [vocab[token] for token in suffixed] == list(range(257, 257 + 256))


def test_trailing_special_tokens_take_the_last_ids():
    vocab, merges = train_byte_level_bpe([], vocab_size=400, trailing_special_tokens=CLIP_TRAILING)
    assert len(vocab) == 400 and [vocab[token] for token in CLIP_TRAILING] == [398, 399]
    # The same training as without them, two merges short: they only take the last slots.
    plain_vocab, plain_merges = train_byte_level_bpe([], vocab_size=398)
    assert merges == plain_merges and list(vocab.items())[:398] == list(plain_vocab.items())

    # When the corpus runs out of pairs first, they follow the last merge's token.
    vocab, merges = train_byte_level_bpe(["<s>"], vocab_size=1000, corpus=["ab ab cd"],
                                         trailing_special_tokens=CLIP_TRAILING)
    assert merges == ["a b", "c d", "Ġ ab", "Ġ cd"]
    assert list(vocab)[257:] == ["ab", "cd", "Ġab", "Ġcd", *CLIP_TRAILING]
    assert list(vocab.values()) == list(range(len(vocab)))

    # A token that already has an id cannot also be last.
    with pytest.raises(ValueError, match="already has id"):
        train_byte_level_bpe([], trailing_special_tokens=["a"])


def test_the_built_owlv2_vocabulary_is_laid_out_as_the_released_one(tiny_model):
    """Released CLIP / OWLv2: 256 byte symbols ("!" = 0, the pad token), their 256 "</w>"
    forms, one token per merge, then <|startoftext|> = 49406 and <|endoftext|> = 49407."""
    from transformers import AutoConfig, AutoTokenizer

    folder = Path(tiny_model("owlv2"))
    saved = json.loads((folder / "tokenizer.json").read_text())
    vocab, merges = saved["model"]["vocab"], saved["model"]["merges"]
    tokens = sorted(vocab, key=vocab.get)
    assert [vocab[token] for token in tokens] == list(range(OWLV2_VOCAB_SIZE))
    assert ALPHABET[0] == "!" and tokens[:256] == ALPHABET
    assert tokens[256:512] == [symbol + "</w>" for symbol in ALPHABET]
    assert tokens[512:-2] == ["".join(merge) for merge in merges]
    assert tokens[-2:] == [BOS_TOKEN, EOS_TOKEN]

    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert len(tokenizer) == OWLV2_VOCAB_SIZE
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id) == (OWLV2_VOCAB_SIZE - 2,
                                                                OWLV2_VOCAB_SIZE - 1)
    assert (tokenizer.pad_token, tokenizer.pad_token_id) == (PAD_TOKEN, 0)
    text = AutoConfig.from_pretrained(folder).text_config
    assert text.vocab_size == OWLV2_VOCAB_SIZE
    assert (text.bos_token_id, text.eos_token_id, text.pad_token_id) == (
        tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)


# Queries of both images of one processor call: one ending in a word-final letter ("a box" was
# pooled at "x</w>" when EOS was id 2), one in the pad token "!", one with digits and
# punctuation, and one of 25 tokens that the processor truncates to MAX_QUERY_TOKENS.
POOLING_QUERIES = [["a box", "a cat!", "street sign 42, (red)?",
                    "a man and a woman walking on the street next to the green park bench"],
                   ["dog"]]  # the processor pads this image's queries with " " ones


@pytest.fixture(scope="module")
def owlv2_pooling_inputs(tiny_model):
    """The tiny OWLv2 processor's output for POOLING_QUERIES and one image, as the labeler
    calls it (truncation=True), with the processor."""
    from PIL import Image
    from transformers import Owlv2Processor

    processor = Owlv2Processor.from_pretrained(tiny_model("owlv2"))
    image = Image.new("RGB", (40, 30), (200, 30, 30))
    inputs = processor(text=POOLING_QUERIES, images=[image, image], truncation=True,
                       return_tensors="pt")
    return processor, inputs


def test_owlv2_queries_pool_at_their_eos(owlv2_pooling_inputs):
    processor, inputs = owlv2_pooling_inputs
    tokenizer = processor.tokenizer
    ids = inputs["input_ids"]  # (images x queries, MAX_QUERY_TOKENS)
    assert ids.shape == (2 * 4, MAX_QUERY_TOKENS)
    eos = tokenizer.eos_token_id
    positions = [row.tolist().index(eos) for row in ids]
    assert all((row == eos).sum() == 1 for row in ids)
    # a box: <|startoftext|> a</w> b o x</w> <|endoftext|>; the truncated query keeps its EOS
    # in the last slot; padding queries " " are BOS, EOS.
    assert positions == [5, 4, 12, MAX_QUERY_TOKENS - 1, 2, 1, 1, 1]
    assert len(tokenizer(POOLING_QUERIES[0][3], verbose=False).input_ids) == 25
    assert ids.argmax(-1).tolist() == positions


def test_owlv2_text_features_are_the_eos_hidden_states(tiny_model, owlv2_pooling_inputs):
    """The query embeddings the detector scores boxes against are its text tower's last
    layer at each query's EOS, through the final layer norm and the text projection."""
    import torch
    from transformers import Owlv2ForObjectDetection

    model = Owlv2ForObjectDetection.from_pretrained(tiny_model("owlv2")).eval()
    processor, inputs = owlv2_pooling_inputs
    ids = inputs["input_ids"]
    with torch.inference_mode():
        outputs = model(**inputs)
        tower = model.owlv2.text_model
        hidden = tower(input_ids=ids, attention_mask=inputs["attention_mask"],
                       output_hidden_states=True).hidden_states[-1]  # last layer, before LN
        rows = torch.arange(len(ids))
        eos = (ids == processor.tokenizer.eos_token_id).int().argmax(-1)

        def features(positions: torch.Tensor) -> torch.Tensor:
            embeds = model.owlv2.text_projection(tower.final_layer_norm(hidden[rows, positions]))
            return embeds / torch.linalg.norm(embeds, dim=-1, keepdim=True)

        queries = outputs.text_embeds.reshape(len(ids), -1)  # (images x queries, D)
        torch.testing.assert_close(queries, features(eos), rtol=1e-5, atol=1e-6)
        # The token before EOS gives another feature: the check tells the positions apart.
        assert (queries - features(eos - 1)).abs().amax(-1).min() > 0.01


def test_highest_count_first_then_the_smallest_pair():
    # Words "ab", "Ġab", "Ġcd": (a, b) occurs twice and goes first; then three pairs occur
    # once each and go in string order, "Ġ" (U+0120) sorting after ASCII letters.
    vocab, merges = train_byte_level_bpe(["<s>"], vocab_size=1000, corpus=["ab ab cd"])
    assert merges == ["a b", "c d", "Ġ ab", "Ġ cd"]
    assert list(vocab)[257:] == ["ab", "cd", "Ġab", "Ġcd"]  # stops when no pair is left

    vocab, merges = train_byte_level_bpe(["<s>"], vocab_size=1 + 256 + 2, corpus=["ab ab cd"])
    assert merges == ["a b", "c d"] and len(vocab) == 1 + 256 + 2


def test_end_of_word_suffix_marks_each_word_last_symbol():
    vocab, merges = train_byte_level_bpe(
        ["<s>"], vocab_size=1000, corpus=["AB ab\tcd"], end_of_word_suffix="</w>"
    )
    # All suffixed symbols follow the alphabet, then the merges' tokens. CLIP style words are
    # lowercased and carry no space marker: "ab" occurs twice, and no merge has a "Ġ".
    assert list(vocab)[257:257 + 256] == [symbol + "</w>" for symbol in ALPHABET]
    assert list(vocab)[257 + 256:] == ["ab</w>", "cd</w>"]
    assert merges == ["a b</w>", "c d</w>"]


def test_clip_style_words_are_the_words_clip_tokenizer_runs_bpe_on():
    from transformers import CLIPTokenizer

    backend = CLIPTokenizer().backend_tokenizer
    texts = [*CORPUS, "It's  A\tBOX-2x... naïve café, 日本 ?!", "they'll've we'd I'M 42nd"]
    for text in texts:
        words = backend.pre_tokenizer.pre_tokenize_str(backend.normalizer.normalize_str(text))
        assert split_words(text, "</w>") == [word for word, _ in words], text


@pytest.mark.parametrize("family", FAMILIES)
def test_built_tokenizers_round_trip_and_compress_the_corpus(family, tiny_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model(family))
    tokens = text_bytes = 0
    for text in CORPUS:
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert tokenizer.unk_token_id not in ids, text
        decoded = tokenizer.decode(ids)
        if family == "owlv2":
            # CLIP lowercases, and its decoder puts a space after every word-final token
            # (so before punctuation too): compare the text without spaces.
            assert decoded.replace(" ", "") == text.lower().replace(" ", "")
        else:
            assert decoded == text
        tokens += len(ids)
        text_bytes += len(text.encode())
    # Merges learned on this very corpus: at least a third fewer tokens than bytes
    # (measured: 180-187 tokens for 512 bytes in the GPT-2 style families, 164 in CLIP's).
    assert tokens < 2 * text_bytes / 3, (tokens, text_bytes)


@pytest.fixture(scope="module")
def owlv2_tokenizers(tiny_model) -> dict:
    """{name: the tiny OWLv2 checkpoint's tokenizer as AutoTokenizer and the processor load it}."""
    from transformers import AutoTokenizer, Owlv2Processor

    folder = tiny_model("owlv2")
    return {"auto": AutoTokenizer.from_pretrained(folder),
            "processor": Owlv2Processor.from_pretrained(folder).tokenizer}


@pytest.mark.parametrize("loader", ["auto", "processor"])
def test_owlv2_words_ending_in_any_character_have_no_unknown_token(owlv2_tokenizers, loader):
    tokenizer = owlv2_tokenizers[loader]
    unk = tokenizer.unk_token_id  # "<|endoftext|>", also EOS: it must only end a query
    assert tokenizer.tokenize("a box") == ["a</w>", "b", "o", "x</w>"]
    endings = string.ascii_letters + string.digits + string.punctuation + "éü日"
    for char in endings:
        for text in (f"a bo{char}", char):  # after other symbols, and as a whole word
            tokens = tokenizer.tokenize(text)
            # "!" is the pad token, special as in the real OWLv2 tokenizer: it is matched
            # before BPE and keeps its own token.
            last = "!" if char == "!" else "</w>"
            assert "<|endoftext|>" not in tokens and tokens[-1].endswith(last), (text, tokens)
            ids = tokenizer(text).input_ids
            assert ids[0] == tokenizer.bos_token_id and ids[-1] == unk, (text, ids)
            assert unk not in ids[1:-1], (text, ids)
    for text in CORPUS:
        ids = tokenizer(text).input_ids
        assert unk not in ids[1:-1], text


def test_owlv2_tokenizer_uses_every_merge_on_the_corpus(tiny_model):
    """Encoding with the first k+1 merges gives fewer corpus tokens than with the first k, for
    every k: BPE applies merge k only after all earlier ones, so each one is reached at
    encoding time (a merge with "Ġ" never would be: CLIP words have no space marker)."""
    saved = json.loads((Path(tiny_model("owlv2")) / "tokenizer.json").read_text())
    merges = saved["model"]["merges"]
    assert len(merges) > 100 and not any("Ġ" in "".join(merge) for merge in merges)
    counts = []
    for k in range(len(merges) + 1):
        saved["model"]["merges"] = merges[:k]
        tokenizer = Tokenizer.from_str(json.dumps(saved))
        encodings = tokenizer.encode_batch(CORPUS, add_special_tokens=False)
        counts.append(sum(len(encoding.ids) for encoding in encodings))
    assert all(later < earlier for earlier, later in zip(counts, counts[1:])), counts
