"""Kind `diffusers-sd`, torch-free: a latent text-to-image pipeline (Stable Diffusion 1.x and 2.x), as the API sees it.

A version holds (model_store.importers.diffusers_sd) one safetensors file with every part's weights under a prefix
(`unet.`, `vae.`, `text_encoder.`), so `digest` keeps its meaning, the sha256 of the model's one weights file; the
tokenizer as `tokenizer.json` (the fast tokenizer's own file, digested), which the `tokenizers` package reads
without torch; and in model.json, so in the identity, every config:

    "config": the UNet's, "vae": ..., "text_encoder": ..., "scheduler": the resolved DDIM settings,
    "scheduler_config": the pipeline's scheduler config verbatim,
    "tokenizer": {"file": "tokenizer.json", "sha256": ..., "model_max_length": 77, "pad_token": ..., ...},
    "latent": {"channels": 4, "vae_scale_factor": 8, "scaling_factor": 0.18215, "shift_factor": null},
    "sizes": [[512, 512], [768, 512], [512, 768]] (width, height; the first is the default),
    "default_guidance": 7.5, "flops": {"unet_row": ..., "vae_decode": ..., "text_encoder": ...} (at the default size)

**Work.** A job's model work in FLOPs (`flops`) is estimated from the recorded ones: the UNet's rows and the VAE's
decodes, each scaled by its pixels against the default size's, and the text encoder's prompts. The API and the worker
derive a job's time from it (app.core.timeouts). The scaling is linear in pixels, and attention grows faster: SD 1.5's
UNet row at 768x512 is 7.5% above 1.5 times its 512x512 one, which the rate a job's time assumes leaves room for.

**Prompts.** The rules are the kind's, not the emoji text kind's: any text is a prompt (the tokenizer reads
anything). A prompt is normalised as CLIP's tokenizer reads it (NFC, whitespace runs collapsed to one space,
lower case), with control and format characters dropped; past the tokenizer's `model_max_length` tokens (its
specials included) it is truncated, and the job says by how many tokens (`params.truncated_tokens`). An absent
prompt is the empty one, which diffusers also allows. `negative_prompt` follows the same rules; an empty one is
none. `guidance` has diffusers' meaning: at s <= 1 only the conditional row runs (`do_classifier_free_guidance`
is s > 1).
"""

from __future__ import annotations

import hashlib
import threading
import unicodedata
from dataclasses import dataclass
from typing import TYPE_CHECKING

from model_store.bounds import MAX_GUIDANCE, MIN_GUIDANCE
from model_store.errors import ModelStoreError
from model_store.manifest import Manifest
from model_store.text import Prompted, PromptError

if TYPE_CHECKING:
    from model_store.kinds import Work

KIND = "diffusers-sd"
FIELDS = frozenset({"prompt", "negative_prompt", "guidance", "width", "height", "prompt_b"})


def normalise(prompt: str | None) -> str:
    """CLIP's normalisation (its fast tokenizer: NFC, whitespace runs to one space, lower case), trimmed, with control
    and format characters (Unicode Cc and Cf, but whitespace) dropped. None is the empty prompt."""
    if not prompt:
        return ""
    kept = "".join(c for c in prompt if c.isspace() or unicodedata.category(c) not in ("Cc", "Cf"))
    return " ".join(unicodedata.normalize("NFC", kept).split()).lower()


def sizes(manifest: Manifest) -> list[tuple[int, int]]:
    """The model's (width, height) sizes; the first is its default."""
    try:
        found = [(int(w), int(h)) for w, h in manifest.extras["sizes"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelStoreError(f"{manifest.file}: a {KIND} model needs [width, height] `sizes` ({exc!r})") from None
    if not found:
        raise ModelStoreError(f"{manifest.file}: `sizes` is empty")
    return found


def shape(manifest: Manifest) -> tuple[int, int, int]:
    """(height, width, channels) of the default image."""
    width, height = sizes(manifest)[0]
    return height, width, 3


def default_guidance(manifest: Manifest) -> float:
    value = float(manifest.extras.get("default_guidance", 7.5))
    if not MIN_GUIDANCE <= value <= MAX_GUIDANCE:
        raise ModelStoreError(f"{manifest.file}: default_guidance must be within {MIN_GUIDANCE:g}..{MAX_GUIDANCE:g}")
    return value


def rows_per_sample(guidance: float | None) -> int:
    """UNet rows per sample and step: the conditional row, and at s > 1 the unconditional one beside it (diffusers'
    `do_classifier_free_guidance`)."""
    return 2 if guidance is not None and guidance > 1 else 1


def measured_flops(manifest: Manifest) -> tuple[int, int, int] | None:
    """(a UNet row's, a VAE decode's, a prompt's text encode's) FLOPs at the model's default size, as imported; None
    for a model imported before they were recorded."""
    found = manifest.extras.get("flops")
    if found is None:
        return None
    try:
        counts = int(found["unet_row"]), int(found["vae_decode"]), int(found["text_encoder"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelStoreError(f"{manifest.file}: a {KIND} model needs integer `flops` ({exc!r})") from None
    if min(counts) < 0:
        raise ModelStoreError(f"{manifest.file}: `flops` may not be negative")
    return counts


def job_flops(
    manifest: Manifest, steps: int, rows: int, images: int, width: int, height: int, prompts: int
) -> int | None:
    """The model work of a job in FLOPs: `steps` UNet calls of `rows` rows and `images` VAE decodes, each scaled by
    its pixels against the default size's (width x height / the default's), and `prompts` text encodes. Exact
    integer arithmetic, rounded up once. None for a model that records no FLOPs."""
    measured = measured_flops(manifest)
    if measured is None:
        return None
    unet_row, vae_decode, text_encoder = measured
    default_width, default_height = sizes(manifest)[0]
    scaled = (steps * rows * unet_row + images * vae_decode) * width * height
    return -(-scaled // (default_width * default_height)) + prompts * text_encoder


def flops(manifest: Manifest, work: Work) -> int | None:
    """A job's model work in FLOPs (model_store.kinds.Kind.flops): each sample's rows at every step, its decode, and
    its prompts; None for a model that records no FLOPs."""
    width, height = (work.width, work.height) if work.width is not None else sizes(manifest)[0]
    rows = work.samples * rows_per_sample(work.guidance)
    return job_flops(manifest, work.steps, rows, work.samples, width, height, work.prompts)


@dataclass(frozen=True)
class TokenizerFile:
    """The stored tokenizer: its file's digest, the length every prompt is padded or truncated to, and its pad."""

    file: str
    sha256: str
    max_length: int
    pad_token: str

    @classmethod
    def of(cls, manifest: Manifest) -> TokenizerFile:
        data = manifest.extras.get("tokenizer") or {}
        try:
            found = cls(str(data["file"]), str(data["sha256"]), int(data["model_max_length"]), str(data["pad_token"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelStoreError(f"{manifest.file}: a {KIND} model needs a valid `tokenizer` ({exc!r})") from None
        if "/" in found.file or found.file.startswith("."):
            raise ModelStoreError(f"{manifest.file}: tokenizer file name {found.file!r} is not a plain file name")
        return found

    def read(self, manifest: Manifest) -> str:
        """The tokenizer.json text, checked against its digest."""
        if manifest.path is None:
            raise ModelStoreError(f"{manifest.ref} has no location on disk")
        file = manifest.path / self.file
        try:
            data = file.read_bytes()
        except OSError as exc:
            raise ModelStoreError(f"{file}: cannot read the tokenizer ({exc.strerror or exc})") from None
        if hashlib.sha256(data).hexdigest() != self.sha256:
            raise ModelStoreError(f"{file}: sha256 mismatch; the tokenizer is corrupt or was changed")
        return data.decode()


_TOKENIZERS: dict[str, object] = {}
_LOCK = threading.Lock()


def tokenizer(manifest: Manifest):
    """The model's `tokenizers.Tokenizer`, without truncation or padding (one per identity and process)."""
    with _LOCK:
        found = _TOKENIZERS.get(manifest.identity)
        if found is None:
            from tokenizers import Tokenizer

            found = Tokenizer.from_str(TokenizerFile.of(manifest).read(manifest))
            found.no_truncation()
            found.no_padding()
            _TOKENIZERS[manifest.identity] = found
        return found


def token_count(manifest: Manifest, prompt: str) -> int:
    """How many tokens the normalised prompt is, its specials included, before truncation."""
    return len(tokenizer(manifest).encode(prompt).ids)


def truncated_tokens(manifest: Manifest, prompt: str) -> int:
    """How many of the prompt's tokens fall past the tokenizer's length and are dropped (diffusers warns of them)."""
    return max(0, token_count(manifest, prompt) - TokenizerFile.of(manifest).max_length)


def prompts(
    manifest: Manifest, prompt: str | None, guidance: float | None, negative: str | None = None, field: str = "prompt"
) -> Prompted:
    """The kind's rules for a request's prompt (model_store.kinds.Kind.prompts): normalised, the guidance defaulted to
    the model's, and the tokens past the tokenizer's length counted. Every job is guided, the empty prompt too."""
    text = normalise(prompt)
    negative_text = normalise(negative) or None
    if guidance is None:
        guidance = default_guidance(manifest)
    if not MIN_GUIDANCE <= guidance <= MAX_GUIDANCE:
        raise PromptError("guidance", f"guidance must be within {MIN_GUIDANCE:g}..{MAX_GUIDANCE:g}, got {guidance}")
    cut = truncated_tokens(manifest, text) if text else 0
    return Prompted(text or None, float(guidance) + 0.0, negative_prompt=negative_text, truncated_tokens=cut)
