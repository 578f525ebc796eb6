"""What a text model's manifest says about prompts: its vocabulary, its captions and its default guidance.

Torch-free: the API reads it to normalise and check prompts, to key them and to suggest captions; the
worker's text kind reads it to encode them. It is the manifest's top-level `text` field, so it is part
of the model's identity (model_store.manifest.Manifest.identity):

    "text": {"vocabulary": {"tokens": 10, "words": [...]}, "captions": [...], "default_guidance": 3.0}
"""

from __future__ import annotations

from dataclasses import dataclass

from model_store.bounds import MAX_GUIDANCE, MIN_GUIDANCE
from model_store.errors import ModelStoreError
from model_store.manifest import Manifest
from model_store.vocabulary import MAX_PROMPT_CHARS, Encoded, Vocabulary, control_characters, normalise, words

TEXT_FIELD = "text"


@dataclass(frozen=True)
class TextSpec:
    vocabulary: Vocabulary
    captions: tuple[str, ...]  # the training captions, for suggestions
    default_guidance: float

    def to_json(self) -> dict:
        return {
            "vocabulary": self.vocabulary.to_dict(),
            "captions": list(self.captions),
            "default_guidance": self.default_guidance,
        }

    @classmethod
    def of(cls, manifest: Manifest) -> TextSpec:
        """The manifest's text field, or a one-line error naming the manifest."""
        data = manifest.extras.get(TEXT_FIELD)
        try:
            spec = cls(
                Vocabulary.from_dict(data["vocabulary"]),
                tuple(str(c) for c in data["captions"]),
                float(data["default_guidance"]),
            )
        except (TypeError, KeyError, ValueError) as exc:
            raise ModelStoreError(f"{manifest.file}: a text model needs a valid `text` field ({exc!r})") from None
        if not MIN_GUIDANCE <= spec.default_guidance <= MAX_GUIDANCE:
            raise ModelStoreError(f"{manifest.file}: default_guidance must be within {MIN_GUIDANCE:g}..{MAX_GUIDANCE}")
        return spec

    def encode(self, prompt: str) -> Encoded:
        return self.vocabulary.encode(normalise(prompt))


class PromptError(ValueError):
    """A prompt or guidance a model refuses; `field` is the request field to name."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Prompted:
    """A request's text condition after normalisation and defaults: what keys, caches and PNGs carry."""

    prompt: str | None  # normalised; None: no prompt (an empty one is none)
    guidance: float | None  # s; None without a prompt (a kind whose every job is guided always has one)
    ignored: tuple[str, ...] = ()  # words of the prompt that the model does not know
    negative_prompt: str | None = None  # normalised; None: none (an empty one is none)
    truncated_tokens: int = 0  # tokens of the prompt past the tokenizer's length, dropped

    def fields(self) -> dict[str, str | float | None]:
        """The request fields it fixes, normalised (for app.core.spec.Spec.from_request)."""
        return {"prompt": self.prompt, "guidance": self.guidance, "negative_prompt": self.negative_prompt}

    def notes(self) -> dict[str, object]:
        """What the job's `params` say of how the prompt was read: the words left out, the tokens cut."""
        return {
            **({"ignored_words": list(self.ignored)} if self.ignored else {}),
            **({"truncated_tokens": self.truncated_tokens} if self.truncated_tokens else {}),
        }


NO_TEXT = Prompted(None, None)  # a prompt-free request
SUGGESTED_WORDS = 8
NEGATIVE_FIELD = "negative_prompt"  # the request field of a negative prompt


def known_words(spec: TextSpec, n: int = SUGGESTED_WORDS) -> list[str]:
    """The model's most frequent caption words, for a refusal's hint."""
    counts: dict[str, int] = {}
    for caption in spec.captions:
        for word in words(caption):
            counts[word] = counts.get(word, 0) + 1
    ranked = sorted(counts, key=lambda w: (-counts[w], w)) or list(spec.vocabulary.words)
    return ranked[:n]


def resolve_for(
    manifest: Manifest, prompt: str | None, guidance: float | None, negative: str | None = None, field: str = "prompt"
) -> Prompted:
    """A text model's (kind `ddim-unet-text`) rules for a request's prompt and negative prompt
    (model_store.kinds.Kind.prompts)."""
    return resolve(TextSpec.of(manifest), prompt, guidance, field, negative)


def resolve(
    spec: TextSpec, prompt: str | None, guidance: float | None, field: str = "prompt", negative: str | None = None
) -> Prompted:
    """Normalise a prompt and a negative prompt and default the guidance (docs/API.md, "Prompts"), or refuse them
    naming the field.

    - a control character other than whitespace (NUL, BEL, ESC...): refused, naming each as U+XXXX;
    - no prompt, or one that normalises to "": the prompt-free job; a guidance or a negative prompt with it is refused;
    - over MAX_PROMPT_CHARS after normalisation, or no known word: refused;
    - an omitted guidance is the model's default, before keying;
    - a negative prompt follows the prompt's rules (field `negative_prompt`); an empty one is none."""
    text = normalised(prompt, field)
    negative_text = normalised(negative, NEGATIVE_FIELD)
    if not text:
        if guidance is not None:
            raise PromptError("guidance", "guidance needs a prompt: send `prompt`, or leave `guidance` out")
        if negative_text:
            raise PromptError(NEGATIVE_FIELD, "a negative prompt needs a prompt: send `prompt` too")
        return NO_TEXT
    ignored = known(spec, text, field).ignored
    if negative_text:
        ignored += known(spec, negative_text, NEGATIVE_FIELD).ignored
    if guidance is None:
        guidance = spec.default_guidance
    if not MIN_GUIDANCE <= guidance <= MAX_GUIDANCE:
        raise PromptError("guidance", f"guidance must be within {MIN_GUIDANCE:g}..{MAX_GUIDANCE:g}, got {guidance}")
    return Prompted(text, float(guidance) + 0.0, tuple(dict.fromkeys(ignored)), negative_text or None)


def normalised(given: str | None, field: str) -> str:
    """The text normalised ("" for none), or a PromptError naming the field for a control character in it."""
    if controls := control_characters(given or ""):
        names = ", ".join(f"U+{ord(c):04X}" for c in controls)
        raise PromptError(field, f"a prompt may not hold control characters; this one has {names}")
    return normalise(given) if given is not None else ""


def known(spec: TextSpec, text: str, field: str) -> Encoded:
    """The encoding of a normalised, non-empty text, or a PromptError naming the field: too long, or no known word."""
    if len(text) > MAX_PROMPT_CHARS:
        raise PromptError(field, f"at most {MAX_PROMPT_CHARS} characters after normalisation, got {len(text)}")
    encoded = spec.vocabulary.encode(text)
    if not encoded.known:
        hint = ", ".join(known_words(spec))
        raise PromptError(field, f"no word of {text!r} is known to this model; known words include: {hint}")
    return encoded
