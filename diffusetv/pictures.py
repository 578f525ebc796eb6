"""The CLI's pictures in: `sample --image/--mask/--latent` and `invert`, with the API's conversion and keys, so that the
same inputs give the API's bytes (app.inputs, worker.batch, worker.inversion)."""

from __future__ import annotations

import argparse
import base64
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from diffusetv.errors import UserError


@dataclass
class Inputs:
    """What `sample`'s picture options give: the spec's fields, the engine's picture and latent rows."""

    fields: dict = field(default_factory=dict)
    picture: object | None = None  # worker.engine.PictureIn
    latent: object | None = None  # (C, H, W) torch tensor


def read_picture(path: str, option: str, manifest, size: dict, mask: bool = False):
    """A picture file, decoded and converted exactly as the API does (app.core.pictures)."""
    from app.core import pictures
    from app.core.settings import Settings
    from model_store import kinds

    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise UserError(f"{option}: cannot read {path} ({exc.strerror})") from None
    height, width, channels = kinds.of(manifest).image_shape(manifest, size.get("width"), size.get("height"))
    try:
        image = pictures.decode(base64.b64encode(data).decode(), option, Settings().max_image_pixels)
        if mask:
            return pictures.convert_mask(image, width, height)
        return pictures.convert(image, width, height, channels)
    except pictures.PictureError as exc:
        raise UserError(f"{option}: {exc}") from None


def read_latent(path: str, manifest, steps: int, size: dict, sampler: str = "ddim"):
    """An inversion's latent file (`invert --out`, or GET /jobs/{id}/latent): its digest and tensor, refused when it
    was inverted for another model, step count, size or sampler."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    from app.core import pictures

    try:
        blob = Path(path).read_bytes()
        meta = pictures.latent_metadata(blob)
        tensor = load(blob)["latent"]
    except OSError as exc:
        raise UserError(f"--latent: cannot read {path} ({exc.strerror})") from None
    except (pictures.PictureError, SafetensorError, KeyError) as exc:
        raise UserError(f"--latent: {path} is not an inversion's latent ({exc})") from None
    wanted = pictures.latent_key(manifest.identity, steps, size.get("width"), size.get("height"), sampler)
    if (mismatch := pictures.latent_mismatch(meta, wanted)) is not None:
        key, found, value = mismatch
        raise UserError(f"--latent: {path} was inverted with {key} {found}, not {value}")
    return hashlib.sha256(blob).hexdigest(), tensor.float()


def check_options(args: argparse.Namespace) -> None:
    """`sample`'s --sampler, --image, --strength, --mask, --harmonize and --latent, checked as the API checks them,
    before any model is loaded."""
    from model_store.bounds import MAX_HARMONIZE
    from model_store.samplers import refusal

    if refused := refusal(args.sampler, args.eta, args.harmonize):
        raise UserError(f"--{refused[0]}: {refused[1]}")

    if args.latent is not None:
        if args.image is not None or args.mask is not None or args.strength is not None:
            raise UserError("--latent starts from an inversion's noise: it takes no --image, --mask or --strength")
        if args.seed is None and args.eta > 0:
            raise UserError("--eta > 0 draws noise from the seed: give --seed with --latent")
    elif args.image is None:
        for option, value in (("--strength", args.strength), ("--mask", args.mask)):
            if value is not None:
                raise UserError(f"{option} needs --image")
    if args.harmonize and args.mask is None:
        raise UserError("--harmonize needs --mask (and --image)")
    if not 0 <= args.harmonize <= MAX_HARMONIZE:
        raise UserError(f"--harmonize must be in 0..{MAX_HARMONIZE} (got {args.harmonize})")
    if args.strength is not None and not 0 <= args.strength <= 1:
        raise UserError(f"--strength must be in 0..1 (got {args.strength})")


def sample_inputs(args: argparse.Namespace, manifest, size: dict) -> Inputs:
    """`sample`'s picture options (checked by `check_options`), read and converted as the API does."""
    from app.core import pictures
    from model_store.bounds import DEFAULT_STRENGTH
    from worker.engine import PictureIn

    found = Inputs()
    if args.latent is not None:
        digest, found.latent = read_latent(args.latent, manifest, args.steps, size, args.sampler)
        found.fields["latent"] = digest
        return found
    if args.image is None:
        return found
    strength = DEFAULT_STRENGTH if args.strength is None else args.strength
    pixels = read_picture(args.image, "--image", manifest, size)
    mask = read_picture(args.mask, "--mask", manifest, size, mask=True) if args.mask is not None else None
    found.fields = {"image": pictures.digest(pixels), "strength": float(strength), "harmonize": args.harmonize}
    if mask is not None:
        found.fields["mask"] = pictures.digest(mask)
    found.picture = PictureIn(pixels, float(strength), mask, args.harmonize)
    return found


def invert(args: argparse.Namespace) -> int:
    """`diffusetv invert IN.png --out LATENT.safetensors [--sampler S]`: as POST /invert (its latent, and with
    --reconstruction its image), the same bytes."""
    from app.core import pictures
    from app.core.png import encode_png
    from app.core.spec import InvertSpec
    from diffusetv.commands import check_steps, prompt_of, service_engine, size_of
    from model_store.samplers import refusal
    from worker.inversion import latent_blob

    check_steps(args.steps)
    if refused := refusal(args.sampler, inverting=True):
        raise UserError(f"--sampler: {refused[1]}")
    if not Path(args.image).is_file():
        raise UserError(f"IMAGE: no file {args.image}")
    engine = service_engine(args)
    manifest = engine.manifest
    guidance = args.guidance if args.guidance is not None else (1.0 if (args.prompt or "").strip() else None)
    text = prompt_of(manifest, args.prompt, guidance)
    size = size_of(manifest, args.width, args.height)
    pixels = read_picture(args.image, "IMAGE", manifest, size)
    spec = InvertSpec.from_request(args, manifest, **text.fields(), **size, image=pictures.digest(pixels))
    condition = [engine.condition(spec.prompt, spec.guidance, spec.negative_prompt)]
    latent = None
    for inverse in engine.invert([pixels], spec.steps, conditions=condition, size=spec.size, sampler=spec.sampler):
        latent = inverse.x
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(latent_blob(engine, spec, latent[0]))
    print(f"wrote {out} (the latent of {args.image}, {spec.steps} steps, {manifest.ref})")
    if args.reconstruction:
        from diffusion.ddim import last_step

        run = engine.reconstruct([latent[0]], spec.steps, conditions=condition, size=spec.size, sampler=spec.sampler)
        png = encode_png(engine.images(last_step(run))[0], engine.parameters(spec))
        Path(args.reconstruction).write_bytes(png)
        print(f"wrote {args.reconstruction} (its reconstruction)")
    return 0
