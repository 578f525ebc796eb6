"""The models the API offers: which model a request names, which ones live workers serve, each kind's request
fields and bounds, and how each model describes itself in `GET /models` and in a job. What a kind means comes
from the registry (model_store.kinds); nothing here knows one kind from another.
"""

from __future__ import annotations

from collections.abc import Iterable

from fastapi import HTTPException
from fastapi.exceptions import RequestValidationError

from app.core import keys, timeouts
from app.core.settings import Settings
from app.core.spec import Spec
from model_store import Manifest, ModelStoreError, Store, kinds
from model_store.bounds import MAX_FRAMES, MAX_STEPS, MIN_FRAMES, MIN_STEPS
from model_store.samplers import DEFAULT_SAMPLER
from model_store.text import NO_TEXT, TEXT_FIELD, Prompted, PromptError, TextSpec

NO_WORKER_RETRY_S = 5
TIME_BOUNDED = {"steps": (MIN_STEPS, MAX_STEPS), "frames": (MIN_FRAMES, MAX_FRAMES)}  # check_time's fields, bounds


def served(redis, refs: Iterable[str]) -> set[str]:
    """The exact refs (name@version) among `refs` that a live worker has loaded.

    Every worker renews the engine claim of each model it has loaded with its heartbeat, with the
    heartbeat's TTL (worker.heartbeat), so a claim exists exactly while a live worker serves the model."""
    refs = list(dict.fromkeys(refs))
    if not refs:
        return set()
    return {ref for ref, engine in zip(refs, redis.mget([keys.engine(r) for r in refs]), strict=True) if engine}


def require_served(redis, manifest: Manifest) -> None:
    """503 with Retry-After, naming the model, when no live worker serves it: the job is not queued."""
    if manifest.ref not in served(redis, [manifest.ref]):
        raise HTTPException(
            503,
            f"no live worker serves model {manifest.ref}; start one with `diffusetv worker --model {manifest.ref}` "
            "or add it to DIFFUSETV_MODELS",
            headers={"Retry-After": str(NO_WORKER_RETRY_S)},
        )


def check_request(manifest: Manifest, steps: int, given: Iterable[str], sampler: str = DEFAULT_SAMPLER) -> None:
    """422 naming the field when the request asks for more than the model's kind takes: a field, more steps than its
    bound, or a sampler the model cannot run (model_store.kinds.Kind.refuse_sampler)."""
    kind = kinds.served(manifest)
    errors = [
        {"type": "value_error", "loc": ("body", field), "msg": f"kind {kind.name!r} does not take {field!r}"}
        for field in sorted(set(given) - kind.fields)
    ]
    bound = kind.steps_bound(manifest, sampler)
    if steps > bound:
        by = "" if sampler == DEFAULT_SAMPLER else f" with sampler {sampler!r}"
        msg = f"{manifest.ref} (kind {kind.name!r}) runs at most {bound} steps{by}"
        errors.append({"type": "less_than_equal", "loc": ("body", "steps"), "msg": msg, "input": steps})
    refused = kind.refuse_sampler(manifest, sampler)
    if refused is not None:
        msg = f"sampler {sampler!r}: {refused}"
        errors.append({"type": "value_error", "loc": ("body", "sampler"), "msg": msg, "input": sampler})
    if errors:
        raise RequestValidationError(errors)


def check_time(settings: Settings, manifest: Manifest, spec: Spec, field: str) -> None:
    """422 naming `field` (`steps`, or an interpolation's `frames`) when the job's time (app.core.timeouts) would pass
    MAX_JOB_TIMEOUT, saying the most this model takes with the request's other fields as they are: the most steps, or
    the most frames (at most MAX_FRAMES) at its steps. An interpolation too long even at its fewest frames is refused
    naming `steps`. Never for a model that records no cost: its jobs have JOB_TIMEOUT."""
    seconds = timeouts.job_timeout(settings, manifest, spec)
    if seconds <= settings.max_job_timeout:
        return
    asked, asked_for = field, getattr(spec, field)
    most = timeouts.most(settings, manifest, spec, field, *TIME_BOUNDED[field])
    if most < TIME_BOUNDED[field][0]:  # too long even at its fewest frames: fewer steps are what fit
        field = "steps"
        most = timeouts.most(settings, manifest, spec, field, *TIME_BOUNDED[field])
    given = getattr(spec, field)
    held = "this guidance"
    if asked == "frames":
        held += f" and {spec.steps} steps" if field == "frames" else f" and {asked_for} frames"
    size = f" at {spec.width}x{spec.height}" if spec.width is not None else ""
    msg = (
        f"{manifest.ref} takes at most {most} {field}{size} with {held}: {given} {field} would take {seconds} s at "
        f"the slowest rate assumed (DIFFUSETV_MIN_GFLOPS={settings.min_gflops:g} GFLOP/s), past "
        f"DIFFUSETV_MAX_JOB_TIMEOUT ({settings.max_job_timeout} s)"
    )
    raise RequestValidationError([{"type": "less_than_equal", "loc": ("body", field), "msg": msg, "input": given}])


def resolve_model(store: Store, ref: str | None, settings: Settings) -> Manifest:
    """The manifest of a model of a served kind in the store, or a 422 naming the field and the available models.

    The message names only what a client may know: the reference it sent, why its model cannot be served (an
    unknown kind, or one stored but not served, named) and the servable models (no paths)."""
    wanted = ref or settings.model
    try:
        manifest = store.resolve(wanted)
    except ModelStoreError:
        manifest = None
    if manifest is None:
        reason = f"no generative model {wanted!r} (NAME or NAME@VERSION)"
    else:
        reason = kinds.refusal(manifest, repr(wanted))
    if manifest is not None and reason is None:
        return manifest
    available = [m.ref for m in offered(store)]
    msg = f"{reason}; available: {available}"
    raise RequestValidationError([{"type": "value_error", "loc": ("body", "model"), "msg": msg, "input": ref}])


def model_record(manifest: Manifest) -> dict:
    """The job's `model`: which version ran it, its weights' digest and its identity."""
    return {
        "name": manifest.name,
        "version": manifest.version,
        "digest": manifest.digest,
        "identity": manifest.identity,
    }


def image_shape(manifest: Manifest, width: int | None = None, height: int | None = None) -> tuple[int, int]:
    """(side, channels) of a square that holds the model's image at the request's size (its kind says the shape):
    for a job's cost."""
    height_, width_, channels = kinds.of(manifest).image_shape(manifest, width, height)
    return max(height_, width_), channels


def sized(manifest: Manifest, width: int | None, height: int | None) -> dict[str, int]:
    """The request's size fields for the spec: for a model of several sizes, its width and height, defaulted (so that
    one size has one engine key); none for a model of one size. A 422 naming `width` (or `height`) for a size the
    model does not make, listing the sizes it does."""
    try:
        return kinds.of(manifest).size_fields(manifest, width, height)
    except kinds.SizeError as exc:
        field, given = ("width", width) if width is not None else ("height", height)
        raise RequestValidationError(
            [{"type": "value_error", "loc": ("body", field), "msg": str(exc), "input": given}]
        ) from None


def offered(store: Store) -> list[Manifest]:
    """The store's models of kinds a worker can serve (stored-only and unknown kinds are left out)."""
    return [m for m in store.list() if kinds.is_served(m)]


def every_served(store: Store, default: str) -> list[str]:
    """The default model as configured, then every other model of the store a worker can serve (the local stack
    serves them all: `diffusetv up`). A default missing from the store stays, so that the worker says so."""
    first = default.split("@")[0]
    return [default, *sorted({m.name for m in offered(store)} - {first})]


def describe(manifest: Manifest) -> dict:
    """A model's entry in `GET /models`, without `default` and `served`."""
    entry = kinds.of(manifest).describe(manifest)
    shape = entry["shape"]
    square = shape["height"] if shape["height"] == shape["width"] else None
    return {
        "name": manifest.name,
        "version": manifest.version,
        "ref": manifest.ref,
        "digest": manifest.digest,
        "identity": manifest.identity,
        "image_size": square,
        "schedule": manifest.schedule,
        **entry,
    }


def default_ref(store: Store, model: str) -> str:
    """The exact ref of the default model, or the setting as given when it does not resolve."""
    try:
        return store.resolve(model).ref
    except ModelStoreError:
        return model


def text_spec(manifest: Manifest) -> TextSpec | None:
    """A text model's vocabulary, captions and default guidance; None for a model of another conditioning."""
    if kinds.of(manifest).conditioning != "text" or TEXT_FIELD not in manifest.extras:
        return None
    return TextSpec.of(manifest)


def prompted(
    manifest: Manifest,
    prompt: str | None,
    guidance: float | None,
    field: str = "prompt",
    negative_prompt: str | None = None,
) -> Prompted:
    """The request's normalised prompt and guidance, by its kind's rules (model_store.kinds.Kind.prompts), or a 422
    naming the field.

    A model that takes no prompt has refused the fields already (check_request)."""
    rules = kinds.of(manifest).prompts
    if rules is None:
        return NO_TEXT
    try:
        return rules(manifest, prompt, guidance, negative_prompt, field)
    except PromptError as exc:
        given = {"guidance": guidance, "negative_prompt": negative_prompt}.get(exc.field, prompt)
        raise RequestValidationError(
            [{"type": "value_error", "loc": ("body", exc.field), "msg": str(exc), "input": given}]
        ) from None
