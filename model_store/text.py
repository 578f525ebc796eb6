"""What a text model's manifest says about prompts: its vocabulary, its captions and its default guidance.

Torch-free: the API reads it to normalise and check prompts, to key them and to suggest captions; the
worker's text kind reads it to encode them. It is the manifest's top-level `text` field, so it is part
of the model's identity (model_store.manifest.Manifest.identity):

    "text": {"vocabulary": {"tokens": 10, "words": [...]}, "captions": [...], "default_guidance": 3.0}
"""

from __future__ import annotations

from dataclasses import dataclass

from model_store.errors import ModelStoreError
from model_store.manifest import Manifest
from model_store.vocabulary import Encoded, Vocabulary, normalise

TEXT_FIELD = "text"
MAX_GUIDANCE = 20.0


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
        if not 0 <= spec.default_guidance <= MAX_GUIDANCE:
            raise ModelStoreError(f"{manifest.file}: default_guidance must be within 0..{MAX_GUIDANCE}")
        return spec

    def encode(self, prompt: str) -> Encoded:
        return self.vocabulary.encode(normalise(prompt))
