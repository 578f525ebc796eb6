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

from model_store import diffusers_kind, sd_kind
from model_store.bounds import MAX_STEPS
from model_store.diffusers_kind import steps_limit
from model_store.errors import ModelStoreError
from model_store.manifest import Manifest
from model_store.samplers import DDIM, DEFAULT_SAMPLER, SAMPLERS
from model_store.text import Prompted, TextSpec, resolve_for

Shape = tuple[int, int, int]  # (height, width, channels)
# prompts(manifest, prompt, guidance, negative_prompt, field) -> the normalised condition, or a PromptError
Prompts = Callable[[Manifest, str | None, float | None, str | None, str], Prompted]


class SizeError(ModelStoreError):
    """A width and height that the model does not make; the message lists the sizes it does."""


@dataclass(frozen=True)
class Work:
    """What a job asks of its model, as a kind's estimate of its cost reads it (app.core.spec.Spec.work)."""

    samples: int  # images made: one, or an interpolation's frames
    steps: int
    guidance: float | None  # a text job's s (None: no guidance)
    prompts: int  # texts it encodes: its prompt (the empty one too), a negative prompt, an interpolation's prompt_b
    width: int | None = None  # a model of several sizes: the image's (None: the model's default)
    height: int | None = None


# flops(manifest, work) -> the job's model work in FLOPs, or None for a model that records no cost
Flops = Callable[[Manifest, Work], int | None]


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
    prompts: Prompts | None = None  # a text kind's rules for prompts (normalisation, defaults, bounds)
    default_guidance: Callable[[Manifest], float] | None = None  # a text kind's guidance when a request sends none
    sizes: Callable[[Manifest], list[tuple[int, int]]] | None = (
        None  # a kind whose models make several sizes: each model's (width, height) list, its default first
    )
    flops: Flops | None = None  # a kind whose models may record their cost: a job's model work (None: never known)
    # the fields a PNG's `parameters` name, null when a job has none (None: every one of `fields`)
    named: frozenset[str] | None = None
    # why a model of the kind cannot run a sampler (model_store.samplers), in one line, None when it can; by default a
    # kind runs DDIM alone (a plug-in kind's grid(steps) is DDIM's), and a kind that runs the others says so
    sampler_refusal: Callable[[Manifest, str], str | None] | None = None
    # a sampler's own step bound on a model, where it is below the kind's (None: the kind's)
    sampler_steps: Callable[[Manifest, str], int | None] | None = None

    def samplers(self, manifest: Manifest) -> list[str]:
        """The samplers the model runs (GET /models), in model_store.samplers.SAMPLERS's order."""
        return [s for s in SAMPLERS if self.refuse_sampler(manifest, s) is None]

    def refuse_sampler(self, manifest: Manifest, sampler: str) -> str | None:
        """Why the model cannot run `sampler`, in words a client may see; None when it can."""
        if sampler not in SAMPLERS:
            return f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}"
        return (self.sampler_refusal or ddim_only)(manifest, sampler)

    def image_shape(self, manifest: Manifest, width: int | None = None, height: int | None = None) -> Shape:
        """(height, width, channels) of the model's image at the requested size (its default when not given); a
        SizeError naming the model's sizes for one it does not make."""
        if self.sizes is None:
            if width is not None or height is not None:
                raise SizeError(f"{manifest.ref} makes one size; it takes no width or height")
            return self.shape(manifest.config)
        made = self.sizes(manifest)
        default_w, default_h = made[0]
        want = (default_w if width is None else width, default_h if height is None else height)
        if want not in made:
            listed = ", ".join(f"{w}x{h}" for w, h in made)
            raise SizeError(f"{manifest.ref} makes {listed} (width x height), not {want[0]}x{want[1]}")
        return want[1], want[0], self.shape(manifest.config)[2] if self.shape is not None else 3

    def steps_bound(self, manifest: Manifest, sampler: str = DEFAULT_SAMPLER) -> int:
        """The most steps this model runs with `sampler`: the kind's bound, or less where the model's own settings say
        so (a diffusers scheduler's; its multistep grid's for a multistep sampler)."""
        try:
            bound = self.max_steps if self.limit is None else min(self.max_steps, self.limit(manifest.extras))
            own = None if self.sampler_steps is None else self.sampler_steps(manifest, sampler)
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelStoreError(f"{manifest.file}: cannot read its step bound ({exc!r})") from None
        return bound if own is None else min(bound, own)

    def size_fields(self, manifest: Manifest, width: int | None, height: int | None) -> dict[str, int]:
        """A request's size fields for its spec: a model of several sizes always gets its width and height, defaulted,
        so that one size has one engine key; a model of one size gets none. A SizeError for a size it does not make."""
        height_, width_, _ = self.image_shape(manifest, width, height)
        return {} if self.sizes is None else {"width": width_, "height": height_}

    def describe(self, manifest: Manifest) -> dict:
        """What `GET /models` says of a model of this kind, beside its name, version and digests."""
        height, width, channels = self.image_shape(manifest)
        entry = {
            "kind": self.name,
            "shape": {"height": height, "width": width, "channels": channels},
            "conditioning": self.conditioning,
            "max_steps": self.steps_bound(manifest),
            "samplers": self.samplers(manifest),
        }
        if self.default_guidance is not None:  # the guidance of a request that sends none
            entry["default_guidance"] = self.default_guidance(manifest)
        if self.sizes is not None:
            entry["sizes"] = [{"width": w, "height": h} for w, h in self.sizes(manifest)]
        return entry


def ddim_only(manifest: Manifest, sampler: str) -> str | None:
    """A kind's samplers unless it says otherwise: DDIM alone."""
    return None if sampler == DDIM else f"{manifest.ref} (kind {manifest.kind!r}) runs ddim alone"


def every_sampler(manifest: Manifest, sampler: str) -> str | None:
    """A continuous-time kind: every sampler runs on its one grid."""
    return None


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


register(Kind("ddim-unet", square, served=True, sampler_refusal=every_sampler))
register(
    Kind(
        "ddim-unet-text",
        square,
        served=True,
        conditioning="text",
        fields=frozenset({"prompt", "guidance", "prompt_b", "negative_prompt"}),
        # negative_prompt came later: a PNG names it only when given, so that the PNGs of before keep their bytes
        named=frozenset({"prompt", "guidance", "prompt_b"}),
        prompts=resolve_for,
        default_guidance=lambda manifest: TextSpec.of(manifest).default_guidance,
        sampler_refusal=every_sampler,
    )
)
register(Kind("feature-cnn", square))  # the evaluation's feature extractor: in the store, never served
register(
    Kind(
        diffusers_kind.KIND,
        diffusers_kind.shape,
        served=True,
        limit=diffusers_kind.steps_limit,
        sampler_refusal=diffusers_kind.sampler_refusal,
        sampler_steps=diffusers_kind.sampler_steps,
    )
)
register(
    Kind(
        sd_kind.KIND,
        lambda config: (0, 0, 3),  # the size is the request's, from the model's `sizes`
        served=True,
        conditioning="text",
        fields=sd_kind.FIELDS,
        limit=steps_limit,
        prompts=sd_kind.prompts,
        default_guidance=sd_kind.default_guidance,
        sizes=sd_kind.sizes,
        flops=sd_kind.flops,
        sampler_refusal=diffusers_kind.sampler_refusal,
        sampler_steps=diffusers_kind.sampler_steps,
    )
)
