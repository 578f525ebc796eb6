"""The typed models of the OpenAI-compatible images API (POST /v1/images/generations, app.routes.openai).

OpenAI's fields, with our own beside them (the SDKs send those in `extra_body`). OpenAI fields that change nothing
here are accepted and ignored (IGNORED); `stream` and an `output_format` other than png are refused (a 400 naming
the field), as is any field neither API knows.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.schemas import Eta, Guidance, ModelRef, NegativePrompt, Sampler, Seed, Steps

MAX_IMAGES = 10
# OpenAI's fields that are accepted and change nothing here
IGNORED = ("quality", "style", "user", "background", "moderation", "output_compression")


class ImageGenerationRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(
        max_length=2000,
        description="what to draw (a text model's; normalised as POST /generate's `prompt`). A prompt-free model takes "
        'only the empty prompt, `""`',
        examples=[""],
    )
    model: ModelRef = None
    n: int = Field(
        1,
        strict=True,
        ge=1,
        le=MAX_IMAGES,
        description=f"images, 1..{MAX_IMAGES}: seeds `seed`..`seed`+n-1, each its own job, admitted all or none",
    )
    size: str | None = Field(
        None,
        max_length=32,
        description='"WIDTHxHEIGHT": one of the model\'s sizes (GET /models: `shape`, `sizes`); "auto" or absent: '
        "its default size. Any other is a 400 naming `size`",
        examples=["32x32"],
    )
    response_format: Literal["b64_json", "url"] = Field(
        "b64_json",
        description="`b64_json`: the PNG in the answer; `url`: the job's image URL (GET it with the API key, within "
        "DIFFUSETV_RESULT_TTL)",
    )
    stream: bool | None = Field(None, strict=True, description="not supported: `true` is a 400")
    output_format: str | None = Field(None, max_length=16, description='"png" only; any other is a 400')
    partial_images: int | None = Field(None, strict=True, ge=0, le=0, description="not supported: 0 only")
    quality: str | None = Field(None, max_length=32, description="ignored")
    style: str | None = Field(None, max_length=32, description="ignored")
    user: str | None = Field(None, max_length=256, description="ignored")
    background: str | None = Field(None, max_length=32, description="ignored")
    moderation: str | None = Field(None, max_length=32, description="ignored")
    output_compression: int | None = Field(None, strict=True, ge=0, le=100, description="ignored")
    # our own fields (extra_body in the SDKs)
    seed: Seed | None = Field(
        None, description="the first image's noise seed; drawn by the server when absent, and returned as `seed`"
    )
    steps: Steps = 50
    eta: Eta = 0.0
    guidance: Guidance = None
    negative_prompt: NegativePrompt = None
    sampler: Sampler = "ddim"


class ImageData(BaseModel):
    b64_json: str | None = Field(None, description="the PNG, base64 (response_format b64_json)")
    url: str | None = Field(
        None, description="the job's image (response_format url): absolute with DIFFUSETV_PUBLIC_URL; needs the API key"
    )
    revised_prompt: str = Field(description="the prompt as the model read it (normalised); empty without one")


class ImagesResponse(BaseModel):
    created: int = Field(description="Unix time of the answer, in seconds")
    data: list[ImageData]
    seed: int = Field(description="the first image's seed (image i has seed + i): sent, or drawn by the server")
    jobs: list[str] = Field(description="the jobs' ids, in the order of `data` (GET /jobs/{id})")


class OpenAIErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None
    jobs: list[str] | None = Field(None, description="a 408, 409 or 500 after admission: the jobs' ids")


class OpenAIError(BaseModel):
    error: OpenAIErrorBody


ERROR_DESCRIPTIONS = {
    400: "a field is invalid (`param` names it): OpenAI's answer where the other routes answer 422",
    401: "API keys are configured and the bearer key is missing or wrong",
    404: "a job's record expired before its image was read",
    408: "the images were not ready within DIFFUSETV_OPENAI_WAIT_S (`jobs` names them; x-should-retry: false), or "
    "the request body did not arrive within DIFFUSETV_BODY_TIMEOUT_S",
    409: "a job was canceled (x-should-retry: false)",
    413: "request body over 64 KiB",
    415: "the body is not declared as JSON (send Content-Type: application/json)",
    429: "a bound was reached (the model's queue, this client's quota, its open streams); retry after Retry-After s",
    500: "a job failed (x-should-retry: false)",
    503: "Redis is unreachable or full, or no live worker serves the model; retry after Retry-After seconds",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for the given error statuses, all in OpenAI's error shape."""
    return {code: {"model": OpenAIError, "description": ERROR_DESCRIPTIONS[code]} for code in codes}
