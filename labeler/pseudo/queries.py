"""Caption -> detection queries, as the OWL-ST paper's appendix builds them (pure functions).

    caption_queries("A brown dog on the beach.jpg", stop_words, generic_words)
    -> ["brown", "dog", "beach", "a brown", "brown dog", "dog on", "the beach", ...]

Steps:
1. Words: the caption is NFKC-normalised (full-width letters become ASCII, ligatures split)
   and lowercased, then split into words by `caption_words`: a word is a run of Unicode
   letters, digits and combining marks (so Devanagari or Arabic words with vowel signs stay
   whole); an apostrophe between two word characters stays inside the word ("dog's",
   "don't"; the typographic ’ becomes '), as does a zero-width (non-)joiner (Persian,
   Indic scripts); soft hyphens, word joiners and zero-width no-break spaces are invisible
   and dropped; everything else (spaces, punctuation, hyphens, underscores, symbols, emoji)
   separates words. Han, hiragana and katakana (and the iteration mark 々 of 人々), written
   without spaces, give one word per character, so a Chinese or Japanese caption yields
   n-grams of characters instead of one query holding the whole sentence.
2. N-grams: every run of 1..max_ngram consecutive words, joined by one space (nothing
   between two han / kana characters, which are written without one).
3. Filter: an n-gram made only of stop words, generic words (jpg, stock, image, ...) and
   numbers is dropped ("on the", "stock photo", "2019"); one holding any other word is kept
   ("a dog on the", "photo frame"). Repeats are dropped, the first kept.
4. Order and cut: shortest first, and within one length in caption order (all unigrams,
   then all bigrams, ...), cut at max_queries. The order is deterministic, so the same
   caption always gives the same queries; and when a long caption has more n-grams than the
   cut allows, the short ones, which are the object names ("dog", "red car"), are kept and
   the long phrases, which rarely name one box, go.

Word lists (stop words, generic words) are plain text, one word a line, '#' for comments;
the shipped ones are in labeler/pseudo/data.
"""

from __future__ import annotations

import functools
import unicodedata
from collections.abc import Iterator
from pathlib import Path

DATA = Path(__file__).parent / "data"
STOP_WORDS_FILE = DATA / "stop_words.txt"
GENERIC_WORDS_FILE = DATA / "generic_words.txt"

_APOSTROPHES = ("'", "\u2019")  # ASCII and the typographic right single quote
# Invisible, and no word break: the soft hyphen (a hyphenation hint, "Haus\u00adtür" reads
# "Haustür"), the word joiner and the zero-width no-break space. Dropped from the caption.
_INVISIBLE = dict.fromkeys(map(ord, "\u00ad\u2060\ufeff"))
# Zero-width non-joiner and joiner: part of a word's spelling in Persian and Indic scripts
# ("می\u200cخواهم"), kept between two of its characters.
_JOINERS = ("\u200c", "\u200d")
# Scripts written without spaces between words: each character is one word.
_UNSPACED_RANGES = (
    (0x3005, 0x3007),  # 々 (repeats the han before it: 人々, 時々), 〆, 〇
    (0x303B, 0x303C),  # 〻 (the vertical 々), 〼
    (0x3040, 0x30FF),  # hiragana, katakana
    (0x3400, 0x4DBF),  # CJK unified ideographs extension A
    (0x4E00, 0x9FFF),  # CJK unified ideographs
    (0xF900, 0xFAFF),  # CJK compatibility ideographs
    (0xFF66, 0xFF9F),  # half-width katakana
    (0x20000, 0x3FFFF),  # CJK unified ideographs extensions B and later
)


def parse_word_list(text: str) -> frozenset[str]:
    """A word-list file's text -> its words: one a line, stripped, lowercased; blank lines
    and lines starting with '#' skipped."""
    words = (line.strip().lower() for line in text.splitlines())
    return frozenset(word for word in words if word and not word.startswith("#"))


@functools.cache
def shipped_word_list(path: Path) -> frozenset[str]:
    """A word list shipped with the project (STOP_WORDS_FILE, GENERIC_WORDS_FILE)."""
    return parse_word_list(path.read_text(encoding="utf-8"))


def read_word_list(uri: str) -> frozenset[str]:
    """A user's word list from a local path or s3:// URI (UTF-8, a BOM allowed)."""
    from labeler.storage import read_bytes

    return parse_word_list(read_bytes(uri).decode("utf-8-sig"))


def _is_unspaced(char: str) -> bool:
    code = ord(char)
    return any(lo <= code <= hi for lo, hi in _UNSPACED_RANGES)


def _is_word_char(char: str) -> bool:
    """Letters (L*), digits and other numbers (N*), combining marks (M*)."""
    return unicodedata.category(char)[0] in "LNM"


def caption_words(caption: str) -> list[str]:
    """A caption -> its lowercase words, in order (see the module docstring, step 1).

    "The dog’s ball, a café-bar!" -> ["the", "dog's", "ball", "a", "café", "bar"].
    """
    text = unicodedata.normalize("NFKC", caption).lower().translate(_INVISIBLE)
    words: list[str] = []
    current: list[str] = []
    for i, char in enumerate(text):
        if _is_word_char(char):
            if _is_unspaced(char):
                if current:
                    words.append("".join(current))
                    current = []
                words.append(char)
            else:
                current.append(char)
        elif ((char in _APOSTROPHES or char in _JOINERS) and current and i + 1 < len(text)
              and _is_word_char(text[i + 1]) and not _is_unspaced(text[i + 1])):
            current.append("'" if char in _APOSTROPHES else char)
        elif current:
            words.append("".join(current))
            current = []
    if current:
        words.append("".join(current))
    return words


def _gap(before: str, word: str) -> str:
    """What joins two words in an n-gram: one space, none between two han / kana
    characters."""
    return "" if _is_unspaced(before[-1]) and _is_unspaced(word[0]) else " "


def _ngrams(words: list[str], max_ngram: int, filler: list[bool]) -> Iterator[str]:
    """N-grams that hold at least one non-filler word, shortest first, then in caption
    order (steps 2-4 of the module docstring, before deduplication and the cut). Each
    n-gram's text and filler flag extend the (n-1)-gram's at the same start: one string
    concatenation per n-gram."""
    texts, only_filler = list(words), list(filler)
    gaps = [""] + [_gap(a, b) for a, b in zip(words, words[1:])]  # gaps[i]: before word i
    for n in range(1, min(max_ngram, len(words)) + 1):
        if n > 1:
            count = len(words) - n + 1
            texts = [texts[i] + gaps[i + n - 1] + words[i + n - 1] for i in range(count)]
            only_filler = [only_filler[i] and filler[i + n - 1] for i in range(count)]
        for text, skip in zip(texts, only_filler):
            if not skip:
                yield text


def caption_queries(caption: str | None, stop_words: frozenset[str],
                    generic_words: frozenset[str], max_ngram: int = 10,
                    max_queries: int = 300) -> list[str]:
    """A caption -> its queries: distinct word n-grams of 1..max_ngram words, those made
    only of stop words, generic words and numbers dropped, shortest first then in caption
    order, at most max_queries (the paper's 10 and 300). None or a blank caption -> []."""
    if not caption:
        return []
    words = caption_words(caption)
    filler = [w in stop_words or w in generic_words or w.isnumeric() for w in words]
    queries: dict[str, None] = {}
    for query in _ngrams(words, max_ngram, filler):
        queries.setdefault(query)
        if len(queries) == max_queries:
            break
    return list(queries)
