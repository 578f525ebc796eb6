"""The registry of model kinds: what a `model.json`'s `kind` means, torch-free (DESIGN.md, Model kinds).

The API reads this part: which kinds exist, whether a worker can serve them, the request fields each
takes, how it describes itself in `GET /models` and its bounds. How a served kind runs (its network, its
time grid, its parameterisation and its pixels) is the worker's to find, and only a worker imports it.
More kinds are plugged in by naming their modules in `DIFFUSETV_KIND_MODULES`: importing such a module
registers its kinds (`register`, with `module=__name__`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from model_store import diffusers_kind
from model_store.bounds import MAX_STEPS
from model_store.errors import ModelStoreError
from model_store.manifest import Manifest
from model_store.text import TextSpec

Shape = tuple[int, int, int]  # (height, width, channels)


@dataclass(frozen=True)
class Kind:
    name: str
    shape: Callable[[dict], Shape]  # the image shape, from the manifest's config
    served: bool = False  # whether a worker can run it; a stored-only kind (a feature extractor) is not in the API
    module: str | None = None  # the module that registered a plug-in kind (its `__name__`); None for a built-in kind
    conditioning: str = "none"  # "none" or "text"
    fields: frozenset[str] = frozenset()  # request fields beyond seed, steps, eta, model and previews
    max_steps: int = MAX_STEPS
    limit: Callable[[dict], int] | None = (
        None  # a per-model step bound, from the manifest's extras (e.g. its scheduler)
    )

    def steps_bound(self, manifest: Manifest) -> int:
        """The most DDIM steps this model runs: the kind's bound, or less where the model's own settings say so."""
        if self.limit is None:
            return self.max_steps
        try:
            return min(self.max_steps, self.limit(manifest.extras))
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelStoreError(f"{manifest.file}: cannot read its step bound ({exc!r})") from None

    def describe(self, manifest: Manifest) -> dict:
        """What `GET /models` says of a model of this kind, beside its name, version and digests."""
        height, width, channels = self.shape(manifest.config)
        entry = {
            "kind": self.name,
            "shape": {"height": height, "width": width, "channels": channels},
            "conditioning": self.conditioning,
            "max_steps": self.steps_bound(manifest),
        }
        if self.conditioning == "text":  # every text model's manifest has a `text` field (model_store.text)
            entry["default_guidance"] = TextSpec.of(manifest).default_guidance
        return entry


KINDS: dict[str, Kind] = {}


def register(kind: Kind) -> Kind:
    """Add a kind; a second kind of the same name is an error."""
    if kind.name in KINDS and KINDS[kind.name] != kind:
        raise ModelStoreError(f"model kind {kind.name!r} is registered twice")
    KINDS[kind.name] = kind
    return kind


def get(name: str, where: str = "") -> Kind:
    """The kind called `name`, or a one-line error naming it (and `where` it was asked for)."""
    try:
        return KINDS[name]
    except KeyError:
        place = f"{where}: " if where else ""
        raise ModelStoreError(
            f"{place}unknown model kind {name!r} (known: {', '.join(sorted(KINDS))}; "
            "more are added with DIFFUSETV_KIND_MODULES)"
        ) from None


def of(manifest: Manifest) -> Kind:
    """The kind of a model, or a one-line error naming the kind and the manifest."""
    return get(manifest.kind, manifest.file)


def served(manifest: Manifest) -> Kind:
    """The kind of a model a worker can serve, or a one-line error saying why not."""
    kind = of(manifest)
    if not kind.served:
        raise ModelStoreError(f"{manifest.ref} is of kind {kind.name!r}, which is stored but not served")
    return kind


def refusal(manifest: Manifest, label: str | None = None) -> str | None:
    """Why a worker cannot serve this model, in words a client may see (no paths; `label` names the model,
    e.g. as the client asked for it); None when it can."""
    label = label or manifest.ref
    kind = KINDS.get(manifest.kind)
    if kind is None:
        return f"{label} is of unknown model kind {manifest.kind!r}"
    if not kind.served:
        return f"{label} is of kind {kind.name!r}, which is stored but not served"
    return None


def is_served(manifest: Manifest) -> bool:
    """Whether the model is of a known kind that a worker can serve."""
    return refusal(manifest) is None


def require(manifest: Manifest, name: str) -> Kind:
    """The model's kind, which must be `name`: a loader for one kind refuses a model of another."""
    kind = of(manifest)
    if kind.name != name:
        raise ModelStoreError(f"{manifest.ref} is of kind {kind.name!r}, not {name!r}: it cannot be loaded as one")
    return kind


def load_modules(names: Iterable[str]) -> None:
    """Import the modules that register further kinds (DIFFUSETV_KIND_MODULES)."""
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise ModelStoreError(f"kind module {name!r} cannot be imported ({exc})") from None


def square(config: dict) -> Shape:
    """A U-Net's square image: `image_size` pixels a side, `channels` (3 unless said) deep."""
    return int(config["image_size"]), int(config["image_size"]), int(config.get("channels", 3))


register(Kind("ddim-unet", square, served=True))
register(
    Kind(
        "ddim-unet-text",
        square,
        served=True,
        conditioning="text",
        fields=frozenset({"prompt", "guidance", "prompt_b"}),
    )
)
register(Kind("feature-cnn", square))  # the evaluation's feature extractor: in the store, never served
register(
    Kind(
        diffusers_kind.KIND,
        diffusers_kind.shape,
        served=True,
        limit=diffusers_kind.steps_limit,
    )
)
