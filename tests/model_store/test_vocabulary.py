"""Prompt normalisation and the fixed-length, per-prompt word encoding of text models."""

import pytest

from model_store.vocabulary import PAD, START, Vocabulary, control_characters, normalise, words

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


@pytest.mark.parametrize(
    ("raw", "normal"),
    [  # what these normalised to before invisible marks were dropped, pinned: their keys must not move
        ("Red Heart", "red heart"),
        ("  Grinning FACE\u00a0with  smiling eyes\t", "grinning face with smiling eyes"),
        ("One O\u2019Clock", "one o'clock"),
        ("\u201cCat\u201d face", '"cat" face'),
        ("Cafe\u0301 au lait", "café au lait"),
        ("\U0001f468\u200d\U0001f469\u200d\U0001f467 Family", "\U0001f468\u200d\U0001f469\u200d\U0001f467 family"),
        ("\U0001f3f3\ufe0f\u200d\U0001f308 Flag", "\U0001f3f3\ufe0f\u200d\U0001f308 flag"),  # VS16 and ZWJ kept
        ("\U0001f1eb\U0001f1f7", "\U0001f1eb\U0001f1f7"),
        ("\u0915\u094d\u200d\u0937", "\u0915\u094d\u200d\u0937"),  # Devanagari with ZWJ
        ("\u0645\u06cc\u200c\u0631\u0648\u0645", "\u0645\u06cc\u200c\u0631\u0648\u0645"),  # Persian, with ZWNJ
        ("Stra\u00dfe \u0130stanbul", "stra\u00dfe i\u0307stanbul"),
    ],
)
def test_prompts_of_visible_text_normalise_as_before(raw, normal):
    assert normalise(raw) == normal
    assert normalise(normal) == normal


@pytest.mark.parametrize(
    "mark", ["\u200b", "\ufeff", "\u200e", "\u200f", "\u061c", *map(chr, range(0x202A, 0x202F)), "\u2066", "\u2069"]
)
def test_invisible_marks_are_dropped(mark):
    assert normalise(f"{mark}red he{mark}art{mark}") == "red heart"
    assert normalise(f"red {mark} heart") == "red heart"
    assert normalise(f"cafe{mark}\u0301") == "café"  # dropped before NFC: the accent joins its letter
    assert words(f"red{mark} heart") == ["red", "heart"]


def test_control_characters_other_than_whitespace_are_found_once_each():
    assert control_characters("red\x00 heart\x07\x1b[31m\x00\x7f\x9b") == ["\x00", "\x07", "\x1b", "\x7f", "\x9b"]
    assert control_characters("red\theart\n\r\x0b\x0c\x1c\x85 ok") == []  # whitespace: collapsed instead
    assert control_characters("\u200d\u200c\u202e\U0001f600 heart") == []  # format characters are not Cc
