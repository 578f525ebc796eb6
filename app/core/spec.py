"""A request is one object: the job spec, built once from the validated request and carried whole from the
route to the worker, as rq's `Queue.create_job` builds the `Job` that `enqueue_job` takes.

A spec's fields are of two sorts:
- where the job goes (`ADDRESS`): its id, the model's `name@version` and the model's identity;
- what the client asked for: every other field. All of them fix the bytes of the result, except those a
  spec lists in `NOT_OUTPUT` (previews change no byte).

Every place that reads a request's fields asks the spec, with one method each: the engine key's fields
(`key_fields`, for app.core.runs.engine_key), which jobs may share a batch (`batch_key`), the job's `params`
(`params`), the PNG's `parameters` (`png_parameters`), the bytes its results take (`cost`), its model work (`compute`
for the quota, `work` for its kind's estimate of the time it takes) and the RQ job's kwargs (`to_kwargs`, read back by
`from_kwargs`).

**The rule that keeps keys stable.** A field with a default joins the engine key, the params, the PNG's
`parameters` and the RQ kwargs only when it differs from its default. A field added later, with a default,
so leaves every existing key, cached result and PNG byte as it was.

**Rolling upgrades.** `from_kwargs` fills a missing field with its default, so a job queued by an older API
runs on a newer worker; fields that older APIs sent and nothing reads (`RETIRED`) are ignored, with a log
line. Any other unknown field was sent by a newer API, and only because it differs from its default: a
worker that does not know it cannot honour it, so the job fails with a `SpecError` that names it.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Mapping
from dataclasses import MISSING, dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from app.core.jobs import new_job_id
from app.core.submit import PNG_OVERHEAD_BYTES, result_cost
from model_store.bounds import INVERSION_REFINE, MAX_GUIDANCE
from model_store.kinds import Work
from model_store.samplers import DEFAULT_SAMPLER, MULTISTEP

if TYPE_CHECKING:
    from model_store import Manifest

log = logging.getLogger("diffusetv.spec")

ADDRESS = ("job_id", "model_ref", "identity")
RETIRED = frozenset({"run_key"})  # JobSpec.run_key: the API's engine key, which nothing read


class SpecError(ValueError):
    """A job's kwargs that this worker cannot run as asked."""


@dataclass(frozen=True)
class Spec:
    """The fields and methods every job spec shares; `GenerateSpec` and `InterpolateSpec` add the request's."""

    FUNC: ClassVar[str]  # the RQ job function that runs it (worker.jobs)
    KIND: ClassVar[str]  # the job record's `kind`
    BATCH: ClassVar[tuple[str, ...]] = ()  # fields every row of one batch must share
    NOT_OUTPUT: ClassVar[tuple[str, ...]] = ()  # fields that change no byte of the result

    job_id: str
    model_ref: str  # name@version
    identity: str  # the model's identity (model_store.manifest.Manifest.identity)

    @classmethod
    def request_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls) if f.name not in ADDRESS)

    def request(self) -> dict[str, Any]:
        """The request's fields: each one without a default, and each one with a default that it differs from."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in ADDRESS and (f.default is MISSING or getattr(self, f.name) != f.default)
        }

    def output(self) -> dict[str, Any]:
        """The request's fields that fix the result's bytes."""
        return {k: v for k, v in self.request().items() if k not in self.NOT_OUTPUT}

    def key_fields(self) -> dict[str, Any]:
        """The spec's part of the engine key (app.core.runs.engine_key): the model and what fixes the bytes.
        The ref joins the identity because the PNG's `parameters` name the version."""
        return {"identity": self.identity, "model": self.model_ref, **self.output()}

    def batch_key(self) -> tuple:
        """Jobs with equal batch keys may run as rows of one batch."""
        return (self.FUNC, self.identity, *(getattr(self, name) for name in self.BATCH))

    def params(self, notes: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The job record's `params`: the request, and `notes` on how its prompt was read
        (model_store.text.Prompted.notes: the words the model does not know, the tokens cut)."""
        return {**self.request(), **(notes or {})}

    def png_parameters(self) -> dict[str, Any]:
        """The spec's part of the PNG's `parameters` (the engine adds the model's and its own)."""
        return self.output()

    def cost(self, side: int, channels: int) -> int:
        """Upper estimate of the bytes this job's results keep in Redis (app.core.submit.result_cost), for a
        model whose images fit a `side`-pixel square of `channels` channels."""
        raise NotImplementedError

    def compute(self) -> int:
        """The model work of its run, in image-steps: rows × steps, twice the rows with a prompt or a guidance above 1
        (a guided sample's conditional and unconditional rows, DESIGN.md: classifier-free guidance; a latent text
        model guides the empty prompt too)."""
        raise NotImplementedError

    def work(self) -> Work:
        """What the job asks of its model, for its kind's estimate of the work (model_store.kinds.Kind.flops)."""
        raise NotImplementedError

    def inputs(self) -> tuple[str, ...]:
        """The digests of the inputs its worker reads (app.core.objects: INPUT): pictures, masks and latents."""
        return ()

    def to_kwargs(self) -> dict[str, Any]:
        """The RQ job's JSON kwargs."""
        return {**{name: getattr(self, name) for name in ADDRESS}, **self.request()}

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any]):
        """The spec of a queued job; see the module's docstring for what an older or newer API sent."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(kwargs) - names - RETIRED)
        if unknown:
            raise SpecError(
                f"this worker does not know the job field(s) {unknown} (queued by a newer API): upgrade the workers"
            )
        retired = tuple(sorted(set(kwargs) & RETIRED))
        if retired:
            log_retired(cls.__name__, retired)
        try:
            return cls(**{k: v for k, v in kwargs.items() if k in names})
        except TypeError as exc:  # a field without a default is missing
            raise SpecError(f"a {cls.KIND} job's kwargs are incomplete ({exc})") from None

    @classmethod
    def from_request(cls, body: object, manifest: Manifest, **normalised: Any):
        """The spec of a validated request for the model of `manifest`: every request field of the spec that
        `body` has (a pydantic body, or the CLI's arguments), with `normalised` values (a text model's prompt
        and guidance, app.models.prompted) in place of the raw ones."""
        given = {name: getattr(body, name) for name in cls.request_names() if hasattr(body, name)}
        return cls(new_job_id(), manifest.ref, manifest.identity, **{**given, **normalised})


def start_step(steps: int, strength: float | None) -> int:
    """The first step of the `steps`-step grid that an image-to-image row runs: it runs the last
    int(steps × strength) steps (diffusers' `get_timesteps`); `steps` runs none. None: a row from noise, step 0."""
    if strength is None:
        return 0
    return steps - min(int(steps * strength), steps)


def refinements(sampler: str) -> int:
    """Fixed-point iterations per inverse step: DDIM's (model_store.bounds.INVERSION_REFINE); a multistep sampler
    inverts without (diffusion.inversion)."""
    return 0 if sampler in MULTISTEP else INVERSION_REFINE


def inverse_calls(steps: int, sampler: str = DEFAULT_SAMPLER) -> int:
    """Network calls of an inversion of `steps` steps: each inverse step and its fixed-point refinements
    (diffusion.inversion)."""
    return steps * (1 + refinements(sampler))


def guided_rows(prompt: str | None, guidance: float | None) -> int:
    """A sample's rows per step, as the compute quota counts them: 2 with a prompt or a guidance above 1 (a latent text
    model guides the empty prompt too), else 1."""
    return 2 if prompt or (guidance or 0) > 1 else 1


@functools.cache
def log_retired(spec: str, names: tuple[str, ...]) -> None:
    """Once per process for each kind of old job: the fields it carries that nothing reads any more."""
    log.info("%s kwargs from an older API carry %s, which nothing reads: ignored", spec, list(names))


@dataclass(frozen=True)
class GenerateSpec(Spec):
    """A generation job: its sampler (model_store.samplers) from one seed's noise, or from a picture (image-to-image,
    inpainting), or from an inversion's latent.

    Rows of one batch share the grid and its steps, but not where they start: an image-to-image row enters the run at
    its start step (`start_step`), so it shares calls with seed jobs. Inpainting's `harmonize` adds calls to every
    step, so only jobs of equal `harmonize` share a batch. Rows of different samplers share a batch where their
    samplers call the network on one grid: the worker adds that grid to the batch key (Engine.batch_key)."""

    FUNC: ClassVar[str] = "worker.jobs.generate"
    KIND: ClassVar[str] = "generate"
    BATCH: ClassVar[tuple[str, ...]] = ("steps", "width", "height", "harmonize")
    NOT_OUTPUT: ClassVar[tuple[str, ...]] = ("previews",)

    seed: int | None  # None only with `latent` (its noise matters only when eta > 0: seed 0's stream then)
    steps: int
    eta: float
    previews: bool = False
    prompt: str | None = None  # text models: the normalised prompt (None: prompt-free)
    guidance: float | None = None  # and its guidance scale s
    negative_prompt: str | None = None  # text models: the normalised negative prompt (None: none)
    width: int | None = None  # models of several sizes: the image's, always given for them (None: the one size)
    height: int | None = None
    image: str | None = None  # image-to-image and inpainting: the input's pixel digest (app.core.pictures.digest)
    strength: float | None = None  # with `image`: the share of the steps that run (start_step); else None
    mask: str | None = None  # inpainting: the mask's digest (white: repaint)
    harmonize: int = 0  # inpainting: RePaint's back-and-forth jumps per step
    latent: str | None = None  # start from an inversion's latent: its blob's digest (app.core.objects: INPUT)
    sampler: str = DEFAULT_SAMPLER  # model_store.samplers.SAMPLERS

    def __post_init__(self) -> None:
        object.__setattr__(self, "eta", float(self.eta) + 0.0)  # -0.0 is 0.0: one engine key, one set of bytes
        if self.strength is not None:
            object.__setattr__(self, "strength", float(self.strength) + 0.0)

    @property
    def start(self) -> int:
        """The grid step its row enters the run at (0 from noise or a latent; `steps`: it runs none)."""
        return start_step(self.steps, self.strength if self.image is not None else None)

    @property
    def steps_run(self) -> int:
        """The steps its row runs (its progress counts these)."""
        return self.steps - self.start

    def calls(self) -> int:
        """Its row's network calls: each step it runs, and RePaint's re-steps on every one but the last."""
        return self.steps_run + self.harmonize * max(0, self.steps_run - 1)

    def inputs(self) -> tuple[str, ...]:
        return tuple(d for d in (self.image, self.mask, self.latent) if d is not None)

    def cost(self, side: int, channels: int) -> int:
        return result_cost(side, channels, self.steps_run, self.previews)

    def compute(self) -> int:
        return self.calls() * guided_rows(self.prompt, self.guidance)

    def work(self) -> Work:
        prompts = 1 + (self.negative_prompt is not None)
        return Work(1, self.calls(), self.guidance, prompts, self.width, self.height)

    def batch_work(self) -> Work:
        """The most a job of its batch key may ask (its steps and size; a prompt and a negative one, guided at the
        highest scale): what each job that joins its batch is counted (worker.collect.batch_room)."""
        calls = self.steps + self.harmonize * max(0, self.steps - 1)
        return Work(1, calls, MAX_GUIDANCE, 2, self.width, self.height)

    @property
    def size(self) -> tuple[int, int] | None:
        """(width, height) for a model of several sizes; None for one of one size."""
        return None if self.width is None else (self.width, self.height)


@dataclass(frozen=True)
class InterpolateSpec(Spec):
    """An interpolation job: its sampler at eta 0 (DDIM by default) from `frames` points on the great circle between two
    ends' noises: each end a seed's noise, a picture's inversion with the same sampler (`image_a`, `image_b`) or an
    inversion's latent (`latent_a`, `latent_b`)."""

    FUNC: ClassVar[str] = "worker.jobs.interpolate"
    KIND: ClassVar[str] = "interpolate"

    seed_a: int | None  # None: the end is a picture or a latent
    seed_b: int | None
    frames: int
    steps: int
    prompt: str | None = None  # text models: the condition at seed_a's end ...
    prompt_b: str | None = None  # ... and at seed_b's (None: the same prompt all along)
    guidance: float | None = None
    negative_prompt: str | None = None  # as GenerateSpec's
    width: int | None = None
    height: int | None = None
    image_a: str | None = None  # a picture's pixel digest: the end is its inversion
    image_b: str | None = None
    latent_a: str | None = None  # an inversion's latent blob's digest
    latent_b: str | None = None
    sampler: str = DEFAULT_SAMPLER  # the frames' sampler, and its picture ends' inversion's

    @property
    def size(self) -> tuple[int, int] | None:
        return None if self.width is None else (self.width, self.height)

    def inputs(self) -> tuple[str, ...]:
        return tuple(d for d in (self.image_a, self.image_b, self.latent_a, self.latent_b) if d is not None)

    def inverted(self) -> int:
        """How many of its ends are pictures to invert."""
        return (self.image_a is not None) + (self.image_b is not None)

    @property
    def steps_run(self) -> int:
        """Its progress's steps: its ends' inversion (run together), if any, then the frames'."""
        return self.steps * (2 if self.inverted() else 1)

    def key_fields(self) -> dict[str, Any]:
        return {**super().key_fields(), "kind": self.KIND}  # never a generation's key, whatever fields come

    def png_parameters(self) -> dict[str, Any]:
        return {**self.output(), "eta": 0.0}  # the walk runs at eta 0 (whatever its sampler, no noise is added)

    def cost(self, side: int, channels: int) -> int:
        return result_cost(side, channels, self.steps, False, images=2 * self.frames)  # the animation and the strip

    def compute(self) -> int:
        calls = self.frames * self.steps + self.inverted() * inverse_calls(self.steps, self.sampler)
        return calls * guided_rows(self.prompt, self.guidance)

    def work(self) -> Work:
        prompts = 1 + (self.negative_prompt is not None) + (self.prompt_b is not None)
        inverting = self.inverted() * inverse_calls(self.steps, self.sampler)  # its ends' inversions
        steps = self.steps + -(-inverting // self.frames)
        return Work(self.frames, steps, self.guidance, prompts, self.width, self.height)


@dataclass(frozen=True)
class InvertSpec(Spec):
    """An inversion job: its sampler (DDIM by default) run backwards from a picture to the x_T whose generation draws it
    (diffusion.inversion), then forwards again from that latent: the job's image is the reconstruction, its latent the
    x_T. Inversions batch with inversions of the same steps, size and sampler."""

    FUNC: ClassVar[str] = "worker.jobs.invert"
    KIND: ClassVar[str] = "invert"
    BATCH: ClassVar[tuple[str, ...]] = ("steps", "width", "height", "sampler")
    NOT_OUTPUT: ClassVar[tuple[str, ...]] = ("previews",)

    image: str  # the picture's pixel digest
    steps: int
    previews: bool = False
    prompt: str | None = None  # text models: the condition it inverts with (at guidance 1 unless asked otherwise)
    guidance: float | None = None
    negative_prompt: str | None = None
    width: int | None = None
    height: int | None = None
    sampler: str = DEFAULT_SAMPLER  # model_store.samplers.INVERTIBLE: its inversion's and reconstruction's

    @property
    def size(self) -> tuple[int, int] | None:
        return None if self.width is None else (self.width, self.height)

    @property
    def steps_run(self) -> int:
        """Its progress's steps: the inversion's, then the reconstruction's."""
        return 2 * self.steps

    def inputs(self) -> tuple[str, ...]:
        return (self.image,)

    def key_fields(self) -> dict[str, Any]:
        return {**super().key_fields(), "kind": self.KIND, "refine": refinements(self.sampler)}

    def png_parameters(self) -> dict[str, Any]:
        return {**self.output(), "eta": 0.0}  # the reconstruction runs at eta 0

    def cost(self, side: int, channels: int) -> int:
        latent = side * side * channels * 4 + PNG_OVERHEAD_BYTES  # float32, at most the picture's size in model space
        return result_cost(side, channels, self.steps_run, self.previews) + latent

    def compute(self) -> int:
        return (inverse_calls(self.steps, self.sampler) + self.steps) * guided_rows(self.prompt, self.guidance)

    def work(self) -> Work:
        prompts = 1 + (self.negative_prompt is not None)
        calls = inverse_calls(self.steps, self.sampler) + self.steps
        return Work(1, calls, self.guidance, prompts, self.width, self.height)

    def batch_work(self) -> Work:
        """The most an inversion of its batch key may ask (GenerateSpec.batch_work)."""
        return Work(1, inverse_calls(self.steps, self.sampler) + self.steps, MAX_GUIDANCE, 2, self.width, self.height)
