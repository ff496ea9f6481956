"""Caption -> queries (labeler.pseudo.queries) on hand-checked examples."""

import os
import subprocess
import sys
import time

import pytest

from labeler.pseudo.queries import (
    GENERIC_WORDS_FILE,
    STOP_WORDS_FILE,
    caption_queries,
    caption_words,
    parse_word_list,
    read_word_list,
    shipped_word_list,
)

STOP = shipped_word_list(STOP_WORDS_FILE)
GENERIC = shipped_word_list(GENERIC_WORDS_FILE)


def queries(caption, **kw):
    return caption_queries(caption, STOP, GENERIC, **kw)


def test_shipped_word_lists():
    assert len(STOP) == 179  # NLTK's English list
    assert {"the", "a", "of", "on", "don't", "isn't"} <= STOP
    assert {"jpg", "png", "stock", "image", "photo", "picture"} <= GENERIC
    assert not {"dog", "car", "person", "#"} & (STOP | GENERIC)


def test_all_ngrams_shortest_first_then_in_caption_order():
    # words: a brown dog on the beach jpg; fillers: a, on, the, jpg
    assert queries("A brown dog on the beach.jpg", max_ngram=3) == [
        "brown", "dog", "beach",
        "a brown", "brown dog", "dog on", "the beach", "beach jpg",  # not "on the"
        "a brown dog", "brown dog on", "dog on the", "on the beach", "the beach jpg",
    ]


def test_the_cut_keeps_the_shortest():
    assert queries("A brown dog on the beach.jpg", max_queries=4) == [
        "brown", "dog", "beach", "a brown"]
    assert queries("red car", max_queries=1) == ["red"]


def test_max_ngram_bounds_the_length():
    caption = " ".join(f"w{i}" for i in range(12))  # 12 distinct words, no filler
    out = queries(caption, max_ngram=10)
    assert max(len(q.split()) for q in out) == 10
    assert len(out) == sum(12 - n + 1 for n in range(1, 11))  # 12 + 11 + ... + 3 = 75
    assert out[-1] == " ".join(f"w{i}" for i in range(2, 12))
    assert queries(caption, max_ngram=1) == caption.split()


def test_defaults_are_the_papers():
    caption = " ".join(f"w{i}" for i in range(100))  # 100 + 99 + ... > 300 n-grams
    out = queries(caption)
    assert len(out) == 300
    assert out[:100] == caption.split() and len(out[100].split()) == 2


@pytest.mark.parametrize("caption", [
    None, "", "   ", "it is what it is", "Stock Photo - Image.JPG", "IMG_2019 0001.png",
    "...!!! ,,, ??", "🐶🐱 ❤",
])
def test_captions_without_a_real_word_give_no_query(caption):
    assert queries(caption) == []


def test_an_ngram_with_one_real_word_is_kept():
    assert queries("stock photo frame") == [
        "frame", "photo frame", "stock photo frame"]
    assert queries("the 3 dogs") == ["dogs", "3 dogs", "the 3 dogs"]


def test_repeats_are_dropped_first_kept():
    assert queries("dog dog dog") == ["dog", "dog dog", "dog dog dog"]
    assert queries("Dog, DOG! dog.") == ["dog", "dog dog", "dog dog dog"]


def test_punctuation_separates_words():
    assert caption_words("Hello, world! (cats)...dogs;birds/fish-tank_top") == [
        "hello", "world", "cats", "dogs", "birds", "fish", "tank", "top"]
    assert caption_words("dog 🐶 + cat = ❤ @home #1") == ["dog", "cat", "home", "1"]


def test_apostrophes_stay_inside_words():
    assert caption_words("The dog\u2019s ball isn't 'red' rock'n'roll dogs'") == [
        "the", "dog's", "ball", "isn't", "red", "rock'n'roll", "dogs"]
    assert queries("it isn't red") == ["red", "isn't red", "it isn't red"]


def test_unicode_letters_digits_and_marks():
    assert caption_words("Café crème BRÛLÉE Straße") == ["café", "crème", "brûlée", "straße"]
    # Devanagari: virama and vowel signs are combining marks, inside the word
    assert caption_words("नमस्ते दुनिया") == ["नमस्ते", "दुनिया"]
    assert caption_words("кошка на диване") == ["кошка", "на", "диване"]
    # NFKC: full-width letters and digits, ligatures
    assert caption_words("ＣＡＴ ２ ﬁsh") == ["cat", "2", "fish"]
    # decomposed é (e + combining acute) composes to the same word
    assert caption_words("cafe\u0301") == ["café"]


def test_invisible_characters_do_not_split_a_word():
    # soft hyphens (hyphenation hints in web text), a word joiner, a stray BOM
    assert caption_words("Haus\u00adtür mit Tür\u00ad griff") == ["haustür", "mit", "tür", "griff"]
    assert caption_words("\ufeffdog\u2060house") == ["doghouse"]
    assert queries("red dog\u00adhouse") == ["red", "doghouse", "red doghouse"]
    # zero-width non-joiner / joiner: part of the word's spelling, kept inside it
    assert caption_words("می\u200cخواهم \u200cگربه\u200c") == ["می\u200cخواهم", "گربه"]
    assert caption_words("कर्\u200dता") == ["कर्\u200dता"]


def test_han_and_kana_are_one_word_a_character_joined_without_spaces():
    assert caption_words("一只猫 on a sofa") == ["一", "只", "猫", "on", "a", "sofa"]
    assert queries("只猫 on a 狗", max_ngram=5)[-1] == "只猫 on a 狗"
    # 一 is a numeral (filler); 'on a' is stop words only
    assert queries("一只猫 on a sofa", max_ngram=2) == [
        "只", "猫", "sofa", "一只", "只猫", "猫 on", "a sofa"]
    assert caption_words("ネコとイヌ") == ["ネ", "コ", "と", "イ", "ヌ"]


def test_the_iteration_mark_is_written_without_spaces_like_the_han_it_repeats():
    # 々 repeats the character before it (人々 'people', 時々 'sometimes'): no space inside
    assert caption_words("人々が") == ["人", "々", "が"]
    assert queries("人々が公園", max_ngram=2) == [
        "人", "々", "が", "公", "園", "人々", "々が", "が公", "公園"]
    assert queries("時々 cats", max_ngram=3)[-1] == "時々 cats"


def test_same_caption_same_queries_in_every_process():
    """Queries (and their order) must not depend on Python's per-process string hashing: a
    resumed or re-run job on another worker asks the same."""
    script = ("from labeler.pseudo.queries import *; print(caption_queries("
              "'A small red car parked next to the old tree, stock photo', "
              "shipped_word_list(STOP_WORDS_FILE), shipped_word_list(GENERIC_WORDS_FILE)))")
    runs = {subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                           check=True, env={**os.environ, "PYTHONHASHSEED": seed}).stdout
            for seed in ("1", "2", "3")}
    assert len(runs) == 1
    assert runs.pop().startswith("['small', 'red', 'car', 'parked', 'next', 'old', 'tree', "
                                 "'a small'")


def test_a_huge_caption_is_cut_quickly():
    caption = "the " * 50_000 + " ".join(f"w{i}" for i in range(1000))
    start = time.perf_counter()
    out = queries(caption)
    assert len(out) == 300 and out[0] == "w0"
    assert time.perf_counter() - start < 5


def test_word_list_files(tmp_path):
    text = "# generic words\n\nJPG\n  stock  \n#comment\nimage\n"
    assert parse_word_list(text) == frozenset({"jpg", "stock", "image"})
    path = tmp_path / "generic.txt"
    path.write_bytes(("\ufeff" + text).encode("utf-8"))  # a BOM, as some editors write
    assert read_word_list(str(path)) == frozenset({"jpg", "stock", "image"})
    custom = read_word_list(str(path)) | {"beach"}
    assert caption_queries("a dog on the beach.jpg", STOP, custom, max_ngram=2) == [
        "dog", "a dog", "dog on"]
