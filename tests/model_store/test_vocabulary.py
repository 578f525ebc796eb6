"""Prompt normalisation and the fixed-length, per-prompt word encoding of text models."""

import pytest

from model_store.vocabulary import PAD, START, Vocabulary, normalise, words

CAPTIONS = ["red heart", "cat face", "grinning face with smiling eyes", "one o’clock"]


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("  Red   HEART ", "red heart"),
        ("one o\u2019clock", "one o'clock"),  # typographic apostrophe folded
        ("\u201ccat\u201d\tface\n", '"cat" face'),
        ("Cafe\u0301", "café"),  # NFC: e + combining acute -> é
        ("", ""),
    ],
)
def test_normalise(raw, normal):
    assert normalise(raw) == normal
    assert normalise(normal) == normal  # idempotent


def test_the_vocabulary_is_the_sorted_words_of_the_captions():
    v = Vocabulary.build(CAPTIONS, tokens=6)
    assert v.words == ("cat", "eyes", "face", "grinning", "heart", "o'clock", "one", "red", "smiling", "with")
    assert v.size == len(v.words) + 2
    assert Vocabulary.from_dict(v.to_dict()) == v


def test_each_prompt_is_encoded_alone_to_a_fixed_length():
    v = Vocabulary.build(CAPTIONS, tokens=4)
    red_heart = v.encode("Red heart")
    assert len(red_heart.tokens) == 4 and red_heart.tokens[0] == START and red_heart.tokens[3] == PAD
    assert red_heart.known == ("red", "heart") and red_heart.ignored == ()
    assert v.encode("red  HEART").tokens == red_heart.tokens  # the same after normalisation
    assert v.encode("").tokens == (START, PAD, PAD, PAD)  # the unconditional prompt
    long = v.encode("grinning face with smiling eyes")
    assert long.known == ("grinning", "face", "with") and len(long.tokens) == 4  # truncated


def test_unknown_words_are_left_out_and_reported():
    v = Vocabulary.build(CAPTIONS)
    e = v.encode("blue heart")
    assert e.known == ("heart",) and e.ignored == ("blue",)
    assert v.encode("zebra").known == ()
    assert words("one o’clock, please") == ["one", "o'clock", "please"]
