"""The HTTP boundary's typed models: strict requests (no strings for ints, no unknown fields)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_serializer

from model_store.bounds import (
    DEFAULT_STRENGTH,
    MAX_ETA,
    MAX_FRAMES,
    MAX_GUIDANCE,
    MAX_HARMONIZE,
    MAX_SEED,
    MAX_STEPS,
    MAX_STRENGTH,
    MIN_ETA,
    MIN_FRAMES,
    MIN_GUIDANCE,
    MIN_STEPS,
    MIN_STRENGTH,
)

Seed = Annotated[int, Field(strict=True, ge=0, le=MAX_SEED, description="noise seed, 0..2^53-1", examples=[42])]
Steps = Annotated[
    int, Field(strict=True, ge=MIN_STEPS, le=MAX_STEPS, description=f"the sampler's steps, {MIN_STEPS}..{MAX_STEPS}")
]
Eta = Annotated[
    float,
    Field(strict=True, ge=MIN_ETA, le=MAX_ETA, description="DDIM's: 0 = deterministic, 1 = DDPM-like (scales sigma)"),
]
Prompt = Annotated[
    str | None,
    Field(
        None,
        max_length=2000,
        description="text models: what to draw, by the model kind's rules (docs/API.md, Prompts). `ddim-unet-text`: "
        "normalised (invisible marks dropped, NFC, lower-case, ASCII quotes, one space), then at most 200 "
        "characters, control characters refused. `diffusers-sd`: any text, normalised as CLIP's tokenizer reads it, "
        "truncated past the tokenizer's length (`params.truncated_tokens`). Empty is the same as none",
        examples=["red heart"],
    ),
]
Guidance = Annotated[
    float | None,
    Field(
        None,
        strict=True,
        ge=MIN_GUIDANCE,
        le=MAX_GUIDANCE,
        description="text models: classifier-free guidance scale s (0 = the prompt-free image, 1 = the conditional "
        "model alone); the model's default when absent. Needs a prompt",
    ),
]
NegativePrompt = Annotated[
    str | None,
    Field(
        None,
        max_length=2000,
        description="text models, with a prompt: what to steer away from; its embedding takes the empty prompt's place "
        "in the unconditional branch, so it acts only where guidance mixes two rows (the emoji text kind: guidance "
        "other than 0 and 1; latent text models: guidance > 1); normalised like `prompt`; empty is the same as none",
    ),
]
Side = Annotated[
    int | None,
    Field(
        None,
        strict=True,
        ge=8,
        le=4096,
        description="models of several sizes (GET /models: `sizes`): the image's width or height in pixels, one of the "
        "model's sizes; its default size when absent",
    ),
]


class JobRef(BaseModel):
    """A finished job of the same owner, by its id: another owner's job is a 404, as an unknown id."""

    model_config = ConfigDict(extra="forbid")

    job: str = Field(max_length=64, description="the job's id (32 hex characters)")


MAX_IMAGE_CHARS = 12 * 2**20  # base64 text of an image; the body limit of the image routes bounds it first
ImageInput = Annotated[
    str | JobRef | None,
    Field(
        None,
        description="a picture: its file's bytes (PNG, JPEG or WebP) in standard base64 or as a "
        '`data:image/...;base64,` URL, or `{"job": id}`, a finished job\'s image (a generation, an image-to-image or '
        "inpainting job, an inversion's reconstruction). Converted once, at the API, to the model's size and "
        "channels (docs/API.md, Pictures in)",
    ),
]
LatentInput = Annotated[
    JobRef | None,
    Field(None, description='`{"job": id}` of a succeeded inversion (POST /invert) of the same model and steps'),
]
Strength = Annotated[
    float | None,
    Field(
        None,
        strict=True,
        ge=MIN_STRENGTH,
        le=MAX_STRENGTH,
        description=f"with `image`: the share of the steps that run, from the picture noised to the first of them "
        f"(SDEdit; 0: no step, the picture's pixels; 1: from noise); {DEFAULT_STRENGTH} when absent",
    ),
]
Harmonize = Annotated[
    int,
    Field(
        0,
        strict=True,
        ge=0,
        le=MAX_HARMONIZE,
        description="with `mask`: RePaint's back-and-forth jumps per step (Lugmayr et al. 2022), 0..10",
    ),
]
SamplerName = Literal["ddim", "dpmpp_2m", "unipc"]  # model_store.samplers.SAMPLERS
Sampler = Annotated[
    SamplerName,
    Field(
        "ddim",
        description="how each step is computed from the network's output (docs/API.md, Samplers): `ddim` (Song et al. "
        "2020, with `eta`), `dpmpp_2m` (DPM-Solver++(2M), Lu et al. 2022) or `unipc` (UniPC, Zhao et al. 2023), which "
        "reach DDIM's quality in fewer steps. The multistep samplers take no `eta` > 0 and no `harmonize` > 0, and "
        "`unipc` does not invert. A model may run fewer (GET /models: `samplers`)",
    ),
]
ModelRef = Annotated[
    str | None,
    Field(None, max_length=80, description="NAME or NAME@VERSION; the default model when absent", examples=["emoji32"]),
]


MAX_WEBHOOK_CHARS = 2048
Webhook = Annotated[
    str | None,
    Field(
        None,
        max_length=MAX_WEBHOOK_CHARS,
        description="an https URL the job's events are POSTed to, signed as Standard Webhooks (docs/API.md, Webhooks); "
        "plain http only to DIFFUSETV_WEBHOOK_ALLOW_NETS. Part of the submission, not of the job: it never splits a "
        "run or the cache",
        examples=["https://example.com/diffusetv-hook"],
    ),
]
WebhookEvent = Literal["start", "progress", "completed"]


def _distinct(events: list[str]) -> list[str]:
    if len(set(events)) != len(events):
        raise ValueError("each event at most once")
    return events


WebhookEvents = Annotated[
    Annotated[
        list[WebhookEvent], Field(min_length=1, json_schema_extra={"uniqueItems": True}), AfterValidator(_distinct)
    ]
    | None,
    Field(
        None,
        description="with `webhook`: which events it gets, `start`, `progress` (at most one per 500 ms, latest-wins, "
        'never retried) and `completed` (succeeded, failed or canceled); ["completed"] when absent',
    ),
]


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seed: Seed | None = Field(
        None,
        description="noise seed, 0..2^53-1; drawn by the server when absent (a CSPRNG; the job's `params.seed` says "
        "which), unless `latent` is given (with `latent`, required at eta > 0)",
    )
    steps: Steps = 50
    eta: Eta = 0.0
    model: ModelRef = None
    previews: bool = Field(False, strict=True, description="stream x0 previews as events")
    prompt: Prompt = None
    guidance: Guidance = None
    negative_prompt: NegativePrompt = None
    width: Side = None
    height: Side = None
    image: ImageInput = None
    strength: Strength = None
    mask: ImageInput = Field(None, description="with `image`: inpainting's mask, white = repaint, black = keep")
    harmonize: Harmonize = 0
    latent: LatentInput = None
    sampler: Sampler = "ddim"
    webhook: Webhook = None
    webhook_events: WebhookEvents = None


class InterpolateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seed_a: Seed | None = Field(
        None,
        description="the first end's noise seed, unless `image_a` or `latent_a` is given; drawn by the server when "
        "the end has none of the three (`params.seed_a` says which)",
    )
    seed_b: Seed | None = Field(None, description="the last end's noise seed, as `seed_a`")
    frames: int = Field(
        8, strict=True, ge=MIN_FRAMES, le=MAX_FRAMES, description="interpolation points, both ends included"
    )
    steps: Steps = 50
    model: ModelRef = None
    prompt: Prompt = None
    prompt_b: Prompt = Field(None, description="text models: with `prompt`, the condition moves to prompt_b's")
    guidance: Guidance = None
    negative_prompt: NegativePrompt = None
    width: Side = None
    height: Side = None
    image_a: ImageInput = Field(None, description="a picture for the first end: it is inverted (as POST /invert)")
    image_b: ImageInput = Field(None, description="a picture for the last end")
    latent_a: LatentInput = None
    latent_b: LatentInput = None
    sampler: Sampler = Field("ddim", description="as POST /generate's; picture ends are inverted with it, so not unipc")
    webhook: Webhook = None
    webhook_events: WebhookEvents = None


class InvertRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    image: str | JobRef = Field(description="the picture to invert (as `image` of POST /generate)")
    steps: Steps = 50
    model: ModelRef = None
    previews: bool = Field(False, strict=True, description="stream previews as events: the noise rising, then falling")
    prompt: Prompt = None
    guidance: Guidance = Field(
        None, description="text models: the guidance it inverts with; 1 (the conditional model alone) when absent"
    )
    negative_prompt: NegativePrompt = None
    width: Side = None
    height: Side = None
    sampler: Sampler = Field("ddim", description="the sampler it inverts and reconstructs with: ddim or dpmpp_2m")
    webhook: Webhook = None
    webhook_events: WebhookEvents = None


class TextParams(BaseModel):
    """A job's text condition; a prompt-free job's params have none of these fields."""

    prompt: str | None = Field(None, description="the normalised prompt; absent without one")
    guidance: float | None = Field(None, description="the guidance scale s used (the model's default when not sent)")
    ignored_words: list[str] | None = Field(None, description="words of the prompt the model does not know")
    negative_prompt: str | None = Field(None, description="the normalised negative prompt; absent without one")
    truncated_tokens: int | None = Field(
        None, description="latent text models: tokens of the prompt past the tokenizer's length, which were dropped"
    )
    width: int | None = Field(None, description="models of several sizes: the image's width in pixels")
    height: int | None = Field(None, description="and its height")
    sampler: SamplerName | None = Field(None, description="the sampler, when not ddim; absent: ddim")

    @model_serializer(mode="wrap")
    def _drop_absent(self, handler):
        data = handler(self)
        return {k: v for k, v in data.items() if v is not None or k not in OPTIONAL_PARAMS}


OPTIONAL_PARAMS = frozenset(  # params absent from a job that has none of them (a prompt-free job, one from noise)
    {"prompt", "guidance", "ignored_words", "prompt_b", "negative_prompt", "truncated_tokens", "width", "height"}
    | {"sampler"}
    | {"image", "strength", "mask", "latent", "image_a", "image_b", "latent_a", "latent_b"}
)


class Params(TextParams):
    """A generation job's request (app.core.spec.GenerateSpec.params): these fields, and any a later spec adds."""

    model_config = ConfigDict(extra="allow")

    seed: int | None
    steps: int
    eta: float
    previews: bool = False
    image: str | None = Field(None, description="image-to-image: the picture's pixel digest (absent without one)")
    strength: float | None = Field(None, description="with image: the share of the steps that ran")
    mask: str | None = Field(None, description="inpainting: the mask's pixel digest")
    latent: str | None = Field(None, description="the inversion's latent's digest it started from")


class InterpolateParams(TextParams):
    """An interpolation job's request (app.core.spec.InterpolateSpec.params), as Params."""

    model_config = ConfigDict(extra="allow")

    seed_a: int | None
    seed_b: int | None
    frames: int
    steps: int
    prompt_b: str | None = None


class InvertParams(TextParams):
    """An inversion job's request (app.core.spec.InvertSpec.params), as Params."""

    model_config = ConfigDict(extra="allow")

    image: str = Field(description="the picture's pixel digest")
    steps: int
    previews: bool = False


class ModelInfo(BaseModel):
    name: str
    version: int
    digest: str = Field(description="sha256 of the weights")
    identity: str | None = Field(
        None, description="sha256 of the weights' sha256 and every output-relevant field of model.json"
    )


class Engine(BaseModel):
    device: str = Field(description="cpu or cuda")
    precision: str = Field(description="fp32 or bf16")
    kernels: str = Field(
        "", description="fingerprint of the worker's kernel arithmetic: equal kernels, equal bytes (DETERMINISM.md)"
    )
    encoder: str = Field(
        "",
        description="fingerprint of the worker's PNG encoder (Pillow, its zlib): part of the engine (DETERMINISM.md)",
    )


class Progress(BaseModel):
    step: int
    steps: int


class Job(BaseModel):
    id: str = Field(description="32 hex characters")
    kind: str = Field("generate", description="generate, interpolate or invert")
    status: str = Field(description="queued, running, succeeded, failed or canceled")
    params: Params | InterpolateParams | InvertParams
    model: ModelInfo
    engine: Engine | None = None
    progress: Progress | None = None
    queue_position: int | None = Field(None, description="0 = next, while queued")
    batch_size: int | None = Field(None, description="how many jobs shared the model run")
    created_at: str
    started_at: str | None = None
    finished_at: str | None = None
    error: str | None = None
    image_url: str | None = Field(None, description="the PNG (animated for an interpolation), once succeeded")
    strip_url: str | None = Field(None, description="an interpolation's frames side by side, once succeeded")
    latent_url: str | None = Field(None, description="an inversion's latent (safetensors), once succeeded")
    events_url: str = Field(description="Server-Sent Events of this job")


# The request fields every model takes; any other is a kind's own (model_store.kinds.Kind.fields).
COMMON_FIELDS = frozenset(
    {"seed", "steps", "eta", "model", "previews", "seed_a", "seed_b", "frames", "sampler"}
    | {"image", "strength", "mask", "harmonize", "latent", "image_a", "image_b", "latent_a", "latent_b"}
    | {"webhook", "webhook_events"}
)


class Shape(BaseModel):
    height: int
    width: int
    channels: int = Field(description="3 (RGB) or 1 (grey)")


class Size(BaseModel):
    width: int
    height: int


class ModelEntry(BaseModel):
    name: str
    version: int
    ref: str = Field(description="NAME@VERSION")
    digest: str = Field(
        description="sha256 of the model's one weights file (a latent pipeline's holds every part, under the "
        "prefixes unet., vae. and text_encoder.)"
    )
    identity: str = Field(description="sha256 of the weights' sha256 and every output-relevant field of model.json")
    kind: str = Field(description="how the model runs, e.g. ddim-unet (DESIGN.md, Model kinds)")
    shape: Shape = Field(description="the image shape (a model of several sizes: its default size's)")
    sizes: list[Size] | None = Field(
        None, description="models of several sizes: every width and height a request may ask for, the default first"
    )
    image_size: int | None = Field(description="the side of a square image; null when it is not square")
    conditioning: Literal["none", "text"] = Field(description="what a request conditions the image on")
    default_guidance: float | None = Field(None, description="text models: the guidance s of a request without one")
    max_steps: int = Field(description="the most DDIM steps the model runs")
    samplers: list[SamplerName] = Field(description="the samplers the model runs (a request's `sampler`)")
    schedule: str
    default: bool = Field(description="what /generate uses without `model`")
    served: bool = Field(description="a live worker has the model loaded: requests for it are queued, not 503")


class PromptList(BaseModel):
    model: str = Field(description="NAME@VERSION")
    prompts: list[str] = Field(description="the model's training captions, normalised, for suggestions")
    words: list[str] = Field(description="every word the model knows")


class ModelList(BaseModel):
    default: str
    models: list[ModelEntry]


class Health(BaseModel):
    status: str
    detail: dict = Field(default_factory=dict)


class Error(BaseModel):
    detail: str


ERROR_DESCRIPTIONS = {
    401: "API keys are configured and the bearer key is missing or wrong",
    404: "no such job: unknown, malformed, expired, or another key's",
    408: "the request body did not arrive in full within DIFFUSETV_BODY_TIMEOUT_S",
    409: "the job has not succeeded (image, latent, or a job named as an input) or has already ended (cancel)",
    410: (
        "the result's object is missing from the result store (deleted by hand, or a lifecycle rule shorter than "
        "RESULT_TTL): the job's record outlived it"
    ),
    413: "request body over 64 KiB (over DIFFUSETV_IMAGE_BODY_BYTES on the routes that take pictures)",
    415: "the body is not declared as JSON (send Content-Type: application/json)",
    429: (
        "a bound was reached (the model's queue, the followers of one run, this client's quota of jobs or bytes, "
        "or of open streams and long polls) or the API is at capacity; retry after Retry-After seconds"
    ),
    503: (
        "Redis or the result store is unreachable, Redis is full, or no live worker serves the model; retry after "
        "Retry-After seconds"
    ),
}


def error_responses(*codes: int) -> dict[int | str, dict]:
    """OpenAPI `responses` for the given error statuses, all with a JSON `{"detail": ...}` body."""
    return {code: {"model": Error, "description": ERROR_DESCRIPTIONS[code]} for code in codes}


class DeliveryAttempt(BaseModel):
    at: str = Field(description="when the attempt was made (ISO 8601)")
    status_code: int | None = Field(None, description="the receiver's HTTP status; null when there was no answer")
    error: str | None = Field(None, description="why it failed, in general terms (never a resolved address)")
    next_attempt_at: str | None = Field(None, description="when it is tried again; null after the last attempt")


class Delivery(BaseModel):
    id: str = Field(description="the webhook-id its requests carry (stable across retries; a progress event's is new)")
    type: str = Field(description="job.started, job.progress or job.completed")
    state: Literal["pending", "delivered", "failed", "dropped"] = Field(
        description="pending (to be tried), delivered, failed (no more tries), or dropped (a progress report that the "
        "job's end or a busy receiver made moot; never retried)"
    )
    url: str = Field(description="the job's webhook, as it was sent")
    created_at: str = Field(description="when the event was enqueued (the envelope's timestamp)")
    next_attempt_at: str | None = Field(None, description="when a notifier may send it next, while pending")
    attempts: list[DeliveryAttempt] = Field(description="every attempt, oldest first")


class DeliveryList(BaseModel):
    deliveries: list[Delivery] = Field(description="the job's webhook deliveries, in the order they were enqueued")
