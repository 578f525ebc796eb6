"""Pictures and latents in: a request's inputs, read once at the API and handed to the worker by digest.

An image input is a file's bytes in base64 (or a data URL), or `{"job": id}`, a finished job's image of the same
owner. Either way it is decoded here, once, and converted to the model's size and channels (app.core.pictures); the
job's spec holds the digest of the converted pixels, so the same picture sent as another file hits the same engine
key and cache entry, and the submit script stores the pixels by that digest beside the job (app.core.submit). The
worker reads them by digest and never decodes a user's file. A latent input is a succeeded inversion of the same
model, steps and size (`{"job": id}`): its latent is stored the same way, by the digest of its bytes.

Every refusal names the request field: 422 for a bad input, 404 for a job that is unknown, expired or another
owner's, 409 for one that has not succeeded, 410 for one whose result is missing from the result store, 503 with
Retry-After when this API is already decoding as many pictures as it may at once (DIFFUSETV_IMAGE_DECODES) or the
result store does not answer.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field

from fastapi import HTTPException
from fastapi.exceptions import RequestValidationError

from app import results_http, schemas
from app.core import objects, pictures
from app.core.jobs import JobStatus, owned_record
from app.core.results import ResultStore
from app.core.settings import Settings
from model_store import Manifest, kinds, samplers

DECODE_RETRY_S = 1
IMAGE_KINDS = frozenset({"generate", "invert"})  # jobs whose image.png is one picture (not an interpolation)


@dataclass
class Inputs:
    """A request's inputs: each spec field's digest, and the blobs the submit script stores by digest."""

    fields: dict[str, str] = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=dict)

    def add(self, name: str, digest: str, blob: bytes) -> None:
        self.fields[name] = digest
        self.blobs[digest] = blob


def refuse(name: str, message: str, given: object = None) -> RequestValidationError:
    return RequestValidationError([{"type": "value_error", "loc": ("body", name), "msg": message, "input": given}])


def finished_job(redis, ref: schemas.JobRef, owner: str, name: str) -> dict[str, str]:
    """The record of the job a request names as an input: 404 unknown, expired or another owner's; 409 unfinished."""
    record = owned_record(redis, ref.job, owner)
    if record is None:
        raise HTTPException(404, f"{name}: no such job")
    if record["status"] != JobStatus.SUCCEEDED.value:
        status = record["status"]
        raise HTTPException(409, f"{name}: job {ref.job} is {status}; it can be an input once it has succeeded")
    return record


@dataclass
class Reader:
    """Reads one request's inputs for the model of `manifest` at the request's `size` (width, height; None, None for
    a model of one size), as `owner`, into `inputs`; a finished job's image or latent from the result store."""

    gate: pictures.DecodeGate
    settings: Settings
    redis: object
    results: ResultStore  # where a job named as an input keeps its image or latent
    owner: str
    manifest: Manifest
    size: tuple[int | None, int | None]
    inputs: Inputs = field(default_factory=Inputs)

    def target(self) -> tuple[int, int, int]:
        """(height, width, channels) of the model's image at the request's size: what a picture is converted to."""
        return kinds.of(self.manifest).image_shape(self.manifest, *self.size)

    def decoded(self, value: str | schemas.JobRef, name: str):
        """The input's picture (PIL), from a base64 file or a finished job's PNG, decoded under the gate."""
        if isinstance(value, schemas.JobRef):
            record = finished_job(self.redis, value, self.owner, name)
            if record.get("kind", "generate") not in IMAGE_KINDS:
                raise refuse(name, f"job {value.job} is an {record['kind']} job: name a job with one image", value.job)
            png = self.result(objects.PNG, record.get("sha256"), f"{name}: the image of job {value.job}")
            value = "data:image/png;base64," + base64.b64encode(png).decode()
        try:
            with self.gate:
                return pictures.decode(value, name, self.settings.max_image_pixels)
        except pictures.Busy as exc:
            raise HTTPException(503, str(exc), headers={"Retry-After": str(DECODE_RETRY_S)}) from None
        except pictures.PictureError as exc:
            raise refuse(exc.field, exc.message) from None

    def result(self, kind: str, digest: str | None, what: str) -> bytes:
        """A finished job's result by its record's digest, from the result store: 410 naming `what` when its object is
        missing, 503 with Retry-After while the store does not answer (app.results_http)."""
        return results_http.read(self.results, results_http.object_name(kind, digest), what)

    def picture(self, value: str | schemas.JobRef, name: str) -> None:
        """An image input, converted to the model's size and channels, under `name`."""
        height, width, channels = self.target()
        image = self.decoded(value, name)
        try:
            pixels = pictures.convert(image, width, height, channels)
        except pictures.PictureError as exc:
            raise refuse(name, exc.message) from None
        self.inputs.add(name, pictures.digest(pixels), pictures.to_blob(pixels))

    def mask(self, value: str | schemas.JobRef, name: str) -> None:
        """A mask input: white repaints, black keeps; box-filtered to the model's size, thresholded at 128."""
        height, width, _ = self.target()
        image = self.decoded(value, name)
        try:
            pixels = pictures.convert_mask(image, width, height)
        except pictures.PictureError as exc:
            raise refuse(name, exc.message) from None
        self.inputs.add(name, pictures.digest(pixels), pictures.to_blob(pixels))

    def latent(self, ref: schemas.JobRef, name: str, steps: int, sampler: str) -> None:
        """An inversion's latent, under `name`: 422 for a job that is not an inversion, or one of another model, step
        count, size or sampler."""
        record = finished_job(self.redis, ref, self.owner, name)
        if record.get("kind") != "invert":
            raise refuse(name, f"job {ref.job} is not an inversion (POST /invert)", ref.job)
        blob = self.result(objects.LATENT, record.get("latent_sha256"), f"{name}: the latent of job {ref.job}")
        try:
            meta = pictures.latent_metadata(blob)
        except pictures.PictureError as exc:
            raise refuse(name, exc.message, ref.job) from None
        manifest = self.manifest
        mismatch = pictures.latent_mismatch(meta, pictures.latent_key(manifest.identity, steps, *self.size, sampler))
        if mismatch is not None:
            key, found, value = mismatch
            what = {"identity": f"model {manifest.ref}", "steps": f"{steps} steps"}.get(key, f"{key} {value}")
            raise refuse(name, f"job {ref.job} inverted with another {key} ({found}); this job has {what}")
        self.inputs.add(name, hashlib.sha256(blob).hexdigest(), blob)


def check_generate(body: schemas.GenerateRequest) -> None:
    """422 naming the field for inputs that do not go together (docs/API.md, Samplers and Pictures in)."""
    if refused := samplers.refusal(body.sampler, body.eta, body.harmonize):
        field, msg = refused
        raise refuse(field, msg, getattr(body, field))
    given = body.model_fields_set
    if body.latent is not None:
        for name in ("image", "strength", "mask"):
            if name in given and getattr(body, name) is not None:
                raise refuse("latent", f"latent starts from an inversion's noise: it takes no {name}")
        if body.seed is None and body.eta > 0:
            raise refuse("seed", "eta > 0 draws noise from the seed: send `seed` with `latent` and eta > 0")
    elif body.seed is None:
        raise refuse("seed", "seed is required (unless `latent` is given)")
    if body.image is None:
        for name in ("strength", "mask"):
            if getattr(body, name) is not None:
                raise refuse(name, f"{name} needs `image`")
    if body.harmonize and body.mask is None:
        raise refuse("harmonize", "harmonize needs `mask` (inpainting)", body.harmonize)


def check_interpolate(body: schemas.InterpolateRequest) -> None:
    """422 naming the field unless each end is exactly one of a seed, a picture and a latent, and a picture end's
    sampler inverts."""
    for end in ("a", "b"):
        names = [f"seed_{end}", f"image_{end}", f"latent_{end}"]
        sent = [n for n in names if getattr(body, n) is not None]
        if not sent:
            raise refuse(f"seed_{end}", f"seed_{end} is required (unless image_{end} or latent_{end} is given)")
        if len(sent) > 1:
            raise refuse(sent[1], f"the {end} end is one of {', '.join(names)}; got {' and '.join(sent)}")
    pictured = [name for name in ("image_a", "image_b") if getattr(body, name) is not None]
    if pictured and (refused := samplers.refusal(body.sampler, inverting=True)):
        raise refuse("sampler", f"{pictured[0]} is inverted with the job's sampler: {refused[1]}", body.sampler)


def check_invert(body: schemas.InvertRequest) -> None:
    """422 naming `sampler` for one that does not invert."""
    if refused := samplers.refusal(body.sampler, inverting=True):
        raise refuse("sampler", f"an inversion runs its sampler backwards: {refused[1]}", body.sampler)


def read_generate(reader: Reader, body: schemas.GenerateRequest) -> Inputs:
    if body.image is not None:
        reader.picture(body.image, "image")
    if body.mask is not None:
        reader.mask(body.mask, "mask")
    if body.latent is not None:
        reader.latent(body.latent, "latent", body.steps, body.sampler)
    return reader.inputs


def read_interpolate(reader: Reader, body: schemas.InterpolateRequest) -> Inputs:
    for end in ("a", "b"):
        if (value := getattr(body, f"image_{end}")) is not None:
            reader.picture(value, f"image_{end}")
        if (ref := getattr(body, f"latent_{end}")) is not None:
            reader.latent(ref, f"latent_{end}", body.steps, body.sampler)
    return reader.inputs
