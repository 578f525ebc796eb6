"""Prompts and the word vocabulary of a text model: torch-free, so that the API and the trainer share them.

A prompt is normalised once (DESIGN, "Prompts and guidance"): invisible marks dropped (the bidi
controls, ZERO WIDTH SPACE and the byte order mark), Unicode NFC, lower-case, typographic quotes folded
to ASCII, whitespace runs collapsed to one space, trimmed. The normalised prompt is what keys, caches
and PNG parameters carry; a prompt with another control character is refused (model_store.text). Its
words are looked up in the model's vocabulary (the words of its training captions); unknown words are
left out and reported.

Each prompt is encoded alone, to a fixed number of tokens: START, then the known words in order,
truncated, then PAD. A row's tokens never depend on the prompts beside it, and the empty prompt (the
unconditional branch of classifier-free guidance) is START alone.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import cached_property

PAD, START = 0, 1  # word ids start after these
FIRST_WORD = 2
MAX_PROMPT_CHARS = 200

# CLDR writes "o’clock"; people type "o'clock".
QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u2032": "'",
                        "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"', "\u2033": '"'})  # fmt: skip
# Marks that show nothing, and only hide what a prompt says or split the cache: dropped. ZWJ and ZWNJ
# (U+200D, U+200C) stay: emoji sequences and several scripts need them.
INVISIBLE = dict.fromkeys([
    *range(0x202A, 0x202F),  # the bidi embeddings and overrides, LRE..RLO
    *range(0x2066, 0x206A),  # the bidi isolates, LRI..PDI
    0x200E, 0x200F, 0x061C,  # the bidi marks LRM, RLM and ALM
    0x200B, 0xFEFF,  # ZERO WIDTH SPACE, and ZERO WIDTH NO-BREAK SPACE (the byte order mark)
])  # fmt: skip
WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")  # letters and digits, with inner apostrophes: "o'clock"


def normalise(prompt: str) -> str:
    """Invisible marks dropped, NFC, lower-case, ASCII quotes, one space between words, trimmed."""
    text = unicodedata.normalize("NFC", prompt.translate(INVISIBLE)).lower().translate(QUOTES)
    return " ".join(text.split())


def control_characters(prompt: str) -> list[str]:
    """The prompt's control characters (Unicode Cc), once each, apart from whitespace, which normalise collapses."""
    return list(dict.fromkeys(c for c in prompt if unicodedata.category(c) == "Cc" and not c.isspace()))


def words(prompt: str) -> list[str]:
    """The words of a prompt, after normalisation."""
    return WORD.findall(normalise(prompt))


@dataclass(frozen=True)
class Encoded:
    tokens: tuple[int, ...]  # fixed length: START, known words, PAD
    known: tuple[str, ...]
    ignored: tuple[str, ...]  # words the model does not know


@dataclass(frozen=True)
class Vocabulary:
    words: tuple[str, ...]  # sorted; word i has id FIRST_WORD + i
    tokens: int  # tokens per prompt, START included

    @classmethod
    def build(cls, captions: list[str], tokens: int = 8) -> Vocabulary:
        return cls(tuple(sorted({w for c in captions for w in words(c)})), tokens)

    @property
    def size(self) -> int:
        """Number of ids, PAD and START included: the embedding table's rows."""
        return FIRST_WORD + len(self.words)

    @cached_property
    def ids(self) -> dict[str, int]:
        return {w: FIRST_WORD + i for i, w in enumerate(self.words)}

    def encode(self, prompt: str) -> Encoded:
        ids = self.ids
        found = words(prompt)
        known = [w for w in found if w in ids][: self.tokens - 1]
        tokens = [START, *(ids[w] for w in known)]
        tokens += [PAD] * (self.tokens - len(tokens))
        return Encoded(tuple(tokens), tuple(known), tuple(w for w in found if w not in ids))

    def to_dict(self) -> dict:
        return {"tokens": self.tokens, "words": list(self.words)}

    @classmethod
    def from_dict(cls, d: dict) -> Vocabulary:
        return cls(tuple(d["words"]), int(d["tokens"]))
