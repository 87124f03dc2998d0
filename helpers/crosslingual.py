"""Tools of the cross-lingual notebook (06): dictionary translation and alignment measures.

- `segment` and `translate_words`: the weakest possible machine translation, Chinese to English
  word by word with a dictionary (CC-CEDICT, `helpers.data.load_cedict`). It is the baseline
  that shows what a multilingual encoder does better. `english_lexicon` reads the same
  dictionary backwards, and `translate_words_en_zh` uses it for English to Chinese.
- `unk_rate`: how much of a text a tokenizer cannot represent at all.
- `layer_embeddings`, `alignment_by_layer`: how close a sentence and its translation sit inside
  an encoder, layer by layer (mean-pooled hidden states, cosine similarity, top-1 retrieval).
"""
from __future__ import annotations

import re
from collections import Counter
from typing import Iterable, Mapping, Sequence

import numpy as np

# Chinese punctuation has a plain ASCII twin that an English tokenizer knows.
ZH_PUNCTUATION = str.maketrans({"，": ",", "。": ".", "！": "!", "？": "?", "：": ":", "；": ";",
                                "、": ",", "（": "(", "）": ")", "“": '"', "”": '"', "‘": "'",
                                "’": "'", "《": '"', "》": '"', "…": "...", "～": "~"})

# Dictionary glosses that are notes about the entry rather than a translation of it.
_NOTE = re.compile(r"^(surname |variant of |old variant of |abbr\. for |used in |see |CL:|"
                   r"\(old\)|Japanese variant of |erhua variant of )", re.IGNORECASE)
_PARENTHESES = re.compile(r"\([^()]*\)")


def segment(text: str, words: Mapping | set, max_word_len: int | None = None) -> list[str]:
    """Split `text` greedily into the longest dictionary words, left to right.

    At each position take the longest prefix that is a word of `words`; a character that
    starts no word is its own piece, and runs of such characters that are not Chinese (digits,
    Latin letters) stay together, so "87" or "iPad" survive as one piece. Greedy matching is
    fast and usually right, but it can swallow the first character of the next word.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a string, got {type(text).__name__}")
    if max_word_len is None:
        max_word_len = max((len(w) for w in words), default=1)
    pieces: list[str] = []
    in_run = False  # inside a run of letters or digits that no dictionary word covers
    i = 0
    while i < len(text):
        for j in range(min(len(text), i + max_word_len), i, -1):
            if text[i:j] in words:
                pieces.append(text[i:j])
                in_run, i = False, j
                break
        else:
            char = text[i]
            letter_or_digit = char.isalnum() and not _is_cjk(char)
            if in_run and letter_or_digit:
                pieces[-1] += char
            elif not char.isspace():
                pieces.append(char)
            in_run = letter_or_digit
            i += 1
    return pieces


def _is_cjk(char: str) -> bool:
    return "\u4e00" <= char <= "\u9fff" or "\u3400" <= char <= "\u4dbf"


def first_gloss(glosses: Sequence[str]) -> str | None:
    """The first gloss that translates the word: notes such as "surname Ye" or "variant of ..."
    are skipped, remarks in parentheses removed, and only the first of "a; b" is kept."""
    for gloss in glosses:
        if _NOTE.match(gloss):
            continue
        words = _PARENTHESES.sub(" ", gloss).split(";")[0]
        words = " ".join(words.split())
        if words:
            return words
    return None


def translate_words(text: str, dictionary: Mapping[str, Sequence[str]],
                    max_word_len: int | None = None) -> str:
    """Chinese -> English word by word: greedy segmentation, then each word's first gloss.

    Words without a usable gloss and characters not in the dictionary are kept as they are;
    Chinese punctuation becomes its ASCII twin.
    """
    out = []
    for piece in segment(text, dictionary, max_word_len):
        gloss = first_gloss(dictionary[piece]) if piece in dictionary else None
        out.append(gloss if gloss else piece.translate(ZH_PUNCTUATION))
    return " ".join(out)


# An English word (with an apostrophe part: don't, hotel's), a number, or one other character.
_ENGLISH_TOKEN = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?|\d+|[^\sA-Za-z\d]")


def english_lexicon(dictionary: Mapping[str, Sequence[str]], chinese_texts: Iterable[str] = (),
                    max_word_len: int = 4) -> dict[str, str]:
    """English word -> Chinese word, by reading a Chinese -> English dictionary backwards.

    An entry counts when its first gloss (`first_gloss`) is a single English word; "to " in
    front of a verb is dropped ("to eat" -> "eat"). Many Chinese words share a gloss, most of
    them rare, so the one met most often in `chinese_texts` (cut into words by `segment`, with
    words of up to `max_word_len` characters) wins; then the shorter word, then the earlier
    entry. Keys are lower case.
    """
    counts = Counter(word for text in chinese_texts
                     for word in segment(text, dictionary, max_word_len))
    best: dict[str, tuple[tuple, str]] = {}
    for order, (word, glosses) in enumerate(dictionary.items()):
        gloss = first_gloss(glosses)
        if gloss is None:
            continue
        english = gloss.lower().removeprefix("to ")
        if not (english.isascii() and english.isalpha()):  # several words, digits, notes
            continue
        rank = (-counts[word], len(word), order)
        if english not in best or rank < best[english][0]:
            best[english] = (rank, word)
    return {english: word for english, (_, word) in best.items()}


def translate_words_en_zh(text: str, lexicon: Mapping[str, str]) -> str:
    """English -> Chinese word by word with an `english_lexicon`: every word found in it
    (case-insensitively) becomes its Chinese word; other words, numbers and punctuation stay
    as they are. The result is written without spaces, as Chinese is, except between two
    pieces that stayed Latin."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a string, got {type(text).__name__}")
    out: list[str] = []
    for token in _ENGLISH_TOKEN.findall(text):
        piece = lexicon.get(token.lower(), token)
        if out and _latin(out[-1][-1]) and _latin(piece[0]):
            out.append(" ")
        out.append(piece)
    return "".join(out)


def _latin(char: str) -> bool:
    return char.isascii() and char.isalnum()


# --- what a tokenizer cannot see -------------------------------------------------------------

def unk_rate(tokenizer, texts: Sequence[str]) -> float:
    """Share of the tokens of `texts` (special tokens such as [CLS] not counted) that are the
    tokenizer's unknown token."""
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings, not one string")
    if tokenizer.unk_token_id is None:
        raise ValueError("this tokenizer has no unknown token")
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    total = sum(len(row) for row in ids)
    if total == 0:
        raise ValueError("the texts produced no tokens")
    return sum(row.count(tokenizer.unk_token_id) for row in ids) / total


# --- alignment inside an encoder ---------------------------------------------------------------

def layer_embeddings(model, tokenizer, texts: Sequence[str], *, prefix: str = "",
                     batch_size: int = 64, max_length: int = 128) -> np.ndarray:
    """Mean-pooled hidden states of every layer: an array (layers + 1, len(texts), hidden);
    index 0 is the embedding layer, index L the output of layer L (see mean_pooled_embeddings)."""
    from helpers.domains import mean_pooled_embeddings

    return mean_pooled_embeddings(model, tokenizer, texts, prefix=prefix, batch_size=batch_size,
                                  max_length=max_length, normalize=False, all_layers=True)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True).clip(min=1e-12)


def retrieval_top1(queries: np.ndarray, candidates: np.ndarray) -> float:
    """Share of queries i whose most cosine-similar candidate is candidates[i]."""
    if queries.shape != candidates.shape:
        raise ValueError(f"queries and candidates must have the same shape, got "
                         f"{queries.shape} and {candidates.shape}")
    scores = _unit(queries) @ _unit(candidates).T
    return float(np.mean(scores.argmax(axis=1) == np.arange(len(queries))))


def alignment_by_layer(emb_a: np.ndarray, emb_b: np.ndarray, seed: int = 0):
    """How aligned two languages are in each layer, from layer_embeddings of translation pairs
    (row i of emb_a translates row i of emb_b).

    Returns a DataFrame with one row per layer: the mean cosine similarity of translation
    pairs, of random pairs (every row of emb_a with a different row of emb_b), their
    difference, and top-1 retrieval accuracy from a to b.
    """
    import pandas as pd

    if emb_a.shape != emb_b.shape or emb_a.ndim != 3:
        raise ValueError("emb_a and emb_b must both be (layers, n, hidden) arrays of one shape, "
                         f"got {emb_a.shape} and {emb_b.shape}")
    n = emb_a.shape[1]
    if n < 2:
        raise ValueError("need at least two pairs to compare with random pairs")
    # rolling b by 1..n-1 rows pairs every sentence with some other sentence's translation
    shift = int(np.random.default_rng(seed).integers(1, n))
    rows = []
    for layer in range(emb_a.shape[0]):
        a, b = _unit(emb_a[layer]), _unit(emb_b[layer])
        pair = float(np.mean(np.sum(a * b, axis=1)))
        random = float(np.mean(np.sum(a * np.roll(b, shift, axis=0), axis=1)))
        rows.append({"layer": layer, "translation_cosine": pair, "random_cosine": random,
                     "difference": pair - random,
                     "retrieval_top1": retrieval_top1(emb_a[layer], emb_b[layer])})
    return pd.DataFrame(rows)
