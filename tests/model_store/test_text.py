"""A text model's rules for a request's prompt, guidance and negative prompt (model_store.text.resolve), torch-free."""

import pytest

from model_store.text import NO_TEXT, Prompted, PromptError, TextSpec, resolve
from model_store.vocabulary import Vocabulary

CAPTIONS = ("red heart", "blue heart", "cat face", "dog face", "one o’clock")
SPEC = TextSpec(Vocabulary.build(list(CAPTIONS), tokens=6), CAPTIONS, 3.0)


def refused(prompt, guidance=None, negative=None) -> PromptError:
    with pytest.raises(PromptError) as caught:
        resolve(SPEC, prompt, guidance, negative=negative)
    return caught.value


def test_a_negative_prompt_is_normalised_like_the_prompt():
    got = resolve(SPEC, "  Blue HEART", None, negative="RED\u00a0 heart\u200b  ")
    assert got == Prompted("blue heart", 3.0, negative_prompt="red heart")
    assert got.fields() == {"prompt": "blue heart", "guidance": 3.0, "negative_prompt": "red heart"}
    assert resolve(SPEC, "cat", 2.0, negative="One O\u2019Clock").negative_prompt == "one o'clock"


@pytest.mark.parametrize("empty", [None, "", "   ", "\t\n", "\u200b"])
def test_an_empty_negative_prompt_is_none(empty):
    assert resolve(SPEC, "red heart", 4.0, negative=empty) == resolve(SPEC, "red heart", 4.0)
    assert resolve(SPEC, None, None, negative=empty) == NO_TEXT


@pytest.mark.parametrize("prompt", [None, "", "  "])
def test_a_negative_prompt_needs_a_prompt(prompt):
    error = refused(prompt, negative="red")
    assert error.field == "negative_prompt" and "needs a prompt" in str(error)
    assert refused(prompt, 2.0, negative="red").field == "guidance"  # the guidance is named first, as before


def test_a_negative_prompt_with_no_known_word_is_refused_naming_it():
    error = refused("red heart", negative="zebra unicorn")
    assert error.field == "negative_prompt" and "known words include: " in str(error) and "heart" in str(error)
    assert refused("red heart", negative="red " * 60).field == "negative_prompt"  # too long after normalisation
    assert refused("zebra", negative="red").field == "prompt"  # the prompt's own refusal names the prompt


def test_a_control_character_in_a_negative_prompt_is_refused_naming_it():
    error = refused("red heart", negative="blue\x1bheart")
    assert error.field == "negative_prompt" and "U+001B" in str(error)
    assert refused("red\x00heart", negative="blue").field == "prompt"


def test_the_negative_prompts_unknown_words_join_the_ignored_ones():
    got = resolve(SPEC, "red zebra heart", None, negative="blue lion heart zebra")
    assert got.ignored == ("zebra", "lion") and got.negative_prompt == "blue lion heart zebra"
    assert got.notes() == {"ignored_words": ["zebra", "lion"]}
