"""Pictures in: a request's image, decoded once (at the API) and converted to the model's size and mode.

**The one conversion.** A picture goes into a job this way, and only this way:

1. **Decode.** The value is the file's bytes in standard base64 (ASCII whitespace ignored), or a
   `data:image/...;base64,` URL (its type is not trusted). The file must be PNG, JPEG or WebP, by its content.
   Its size is read from the header and refused when width × height exceeds the decoded-pixels bound (a setting,
   and never more than Pillow's own `Image.MAX_IMAGE_PIXELS`) before any pixel is decoded. An animated file gives
   its first frame.
2. **Orientation.** The EXIF (or XMP) orientation is applied (`ImageOps.exif_transpose`).
3. **8 bits.** 16-bit samples are scaled to 8 bits by their high byte, v >> 8 (65535 -> 255, 32896 -> 128; Pillow's
   own 16-bit greyscale conversion clips at 255 instead). A bilevel, palette, CMYK or YCbCr image becomes RGB (L
   for greyscale); a transparent colour (PNG tRNS) becomes alpha.
4. **Alpha onto white.** c' = round((c·a + 255·(255 − a)) / 255), in integers: (c·a + 255·(255 − a) + 127) // 255.
5. **Channels.** Greyscale to RGB repeats L; RGB to L (a 1-channel model) is ITU-R 601-2 luma as Pillow computes
   it: L = (19595·R + 38470·G + 7471·B + 32768) >> 16.
6. **Crop.** The largest centred box of the target's width:height: the kept side is round(other side × ratio) and
   the box starts at (excess) // 2, so an odd excess leaves its extra pixel on the right or at the bottom.
7. **Resize** to the target (the model's size, or the request's width × height for a latent model) with
   Pillow's LANCZOS filter; a picture already at that size passes unchanged.

A mask goes through steps 1-4 and the crop to L, then a BOX resize and a threshold: 255 (repaint) where the
resized value is >= 128, else 0 (keep). The pixels, (height, width, channels) uint8, are the picture's identity:
`digest` hashes them (not the file's bytes), and `to_blob` hands them to a worker losslessly, which never decodes
the user's file again. Torch-free: numpy, Pillow and safetensors' numpy half only.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import math
import struct
import threading
from typing import Any

import numpy as np
from PIL import Image, ImageOps
from safetensors.numpy import load as load_tensors
from safetensors.numpy import save as save_tensors

FORMATS = ("PNG", "JPEG", "WEBP")  # Pillow's names for the accepted files, by content
MAX_BASE64_CHARS = 24 * 2**20  # a backstop above any body limit's text: the HTTP body limit is the real bound
MAX_HEADER_BYTES = 2**20  # the largest safetensors header read (a latent's is well under 1 KiB)
DATA_URL_PREFIX = "data:image/"
SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")  # 16-bit greyscale (I: as older Pillow opened it)


class PictureError(ValueError):
    """A request's picture that cannot be used; `field` names the request field (image, mask, image_a, latent...)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class Busy(RuntimeError):
    """Every decode slot stayed taken for the gate's whole wait: answer 503 with Retry-After."""

    def __init__(self, retry_after_s: int):
        super().__init__(f"too many pictures are being decoded; retry in {retry_after_s} s")
        self.retry_after_s = retry_after_s


# ------------------------------------------------------------------------------------------------- decode


def file_bytes(value: str, field: str, max_chars: int = MAX_BASE64_CHARS) -> bytes:
    """The file's bytes from standard base64 or a `data:image/...;base64,` URL (ASCII whitespace ignored)."""
    if not isinstance(value, str):
        raise PictureError(field, "expected the image file's bytes in base64, or a data:image/...;base64, URL")
    if len(value) > max_chars:
        raise PictureError(field, f"longer than {max_chars} characters")
    payload = value
    if value.startswith("data:"):
        head, _, payload = value.partition(",")
        if not head.startswith(DATA_URL_PREFIX) or not head.endswith(";base64"):
            raise PictureError(field, "a data URL must be data:image/...;base64,")
    try:
        data = base64.b64decode("".join(payload.split()), validate=True)
    except (binascii.Error, ValueError):
        raise PictureError(field, "not standard base64") from None
    if not data:
        raise PictureError(field, "empty")
    return data


def decode(value: str, field: str, max_pixels: int, max_chars: int = MAX_BASE64_CHARS) -> Image.Image:
    """A request's image value -> its first frame, fully loaded. Refuses anything but PNG, JPEG and WebP, a file
    whose header says width × height > max_pixels (or > Pillow's own bound) before decoding it, and a truncated or
    corrupt file."""
    data = file_bytes(value, field, max_chars)
    bound = min(max_pixels, Image.MAX_IMAGE_PIXELS or max_pixels)
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.DecompressionBombError:  # more than twice Pillow's own bound, seen by Image.open
        raise PictureError(field, f"more than {bound} pixels") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error):  # UnidentifiedImageError is an OSError
        raise PictureError(field, "not a PNG, JPEG or WebP image") from None
    width, height = image.size
    if image.format not in FORMATS:
        raise PictureError(field, "not a PNG, JPEG or WebP image")
    if width * height > bound:
        raise PictureError(field, f"{width}x{height} is more than {bound} pixels")
    try:
        image.seek(0)
        image.load()
        image.getexif()  # read here, so that a corrupt EXIF block is this field's error, not convert's
    except Image.DecompressionBombError:  # an animated file's later frame, as Pillow checks it
        raise PictureError(field, f"more than {bound} pixels") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, MemoryError):
        raise PictureError(field, f"a truncated or corrupt {image.format} file") from None
    return image


# ------------------------------------------------------------------------------------------------ convert


def _eight_bit(image: Image.Image) -> np.ndarray:
    """Steps 3-4: an image of any mode -> (H, W, 1) or (H, W, 3) uint8, alpha composited onto white."""
    mode = image.mode
    if mode in SIXTEEN_BIT:
        wide = np.asarray(image).astype(np.int64)
        return (np.clip(wide, 0, 65535) >> 8).astype(np.uint8)[:, :, None]  # high byte: v >> 8
    if mode == "P" or mode == "PA":
        image = image.convert("RGBA")
    elif mode in ("1", "L", "RGB") and image.info.get("transparency") is not None:
        image = image.convert("LA" if mode in ("1", "L") else "RGBA")  # PNG tRNS: that colour is transparent
    elif mode == "1":
        image = image.convert("L")
    elif mode not in ("L", "LA", "RGB", "RGBA"):
        image = image.convert("RGB")  # CMYK, YCbCr and the rest
    pixels = np.asarray(image)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if image.mode not in ("LA", "RGBA"):
        return pixels
    colour, alpha = pixels[:, :, :-1].astype(np.uint32), pixels[:, :, -1:].astype(np.uint32)
    # round((c·a + 255·(255 − a)) / 255): alpha onto white
    return ((colour * alpha + 255 * (255 - alpha) + 127) // 255).astype(np.uint8)


def _channels(pixels: np.ndarray, channels: int) -> np.ndarray:
    """Step 5: (H, W, 1|3) -> (H, W, channels)."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, not {channels}")
    if pixels.shape[2] == channels:
        return pixels
    if channels == 3:
        return np.repeat(pixels, 3, axis=2)
    r, g, b = (pixels[:, :, i].astype(np.uint32) for i in range(3))
    return ((19595 * r + 38470 * g + 7471 * b + 32768) >> 16).astype(np.uint8)[:, :, None]  # ITU-R 601-2 luma


def crop_box(size: tuple[int, int], width: int, height: int) -> tuple[int, int, int, int]:
    """Step 6: the largest centred (left, top, right, bottom) box of width:height inside an image of `size`."""
    if width < 1 or height < 1:
        raise ValueError(f"target size {width}x{height}")
    w, h = size
    if w * height > h * width:  # wider than the target: keep the height
        kept = max(1, (2 * h * width + height) // (2 * height))  # round(h · width / height)
        left = (w - kept) // 2
        return left, 0, left + kept, h
    kept = max(1, (2 * w * height + width) // (2 * width))  # round(w · height / width)
    top = (h - kept) // 2
    return 0, top, w, top + kept


def _fit(pixels: np.ndarray, width: int, height: int, resample: Image.Resampling) -> np.ndarray:
    """Steps 6-7: centre crop to width:height, then resize (none when already that size)."""
    left, top, right, bottom = crop_box((pixels.shape[1], pixels.shape[0]), width, height)
    pixels = pixels[top:bottom, left:right]
    if pixels.shape[:2] == (height, width):
        return np.ascontiguousarray(pixels)
    mode = "L" if pixels.shape[2] == 1 else "RGB"
    resized = Image.fromarray(np.ascontiguousarray(pixels[:, :, 0] if mode == "L" else pixels), mode=mode)
    out = np.asarray(resized.resize((width, height), resample))
    return np.ascontiguousarray(out[:, :, None] if mode == "L" else out)


def convert(image: Image.Image, width: int, height: int, channels: int) -> np.ndarray:
    """The one conversion (this module's docstring): a decoded image -> (height, width, channels) uint8."""
    pixels = _channels(_eight_bit(ImageOps.exif_transpose(image)), channels)
    return _fit(pixels, width, height, Image.Resampling.LANCZOS)


def convert_mask(image: Image.Image, width: int, height: int) -> np.ndarray:
    """A mask: L as `convert` makes it, centre-cropped, BOX-resized, then 255 (repaint) where >= 128, else 0 (keep).
    Returns (height, width, 1) uint8."""
    pixels = _channels(_eight_bit(ImageOps.exif_transpose(image)), 1)
    grey = _fit(pixels, width, height, Image.Resampling.BOX)
    return np.where(grey >= 128, 255, 0).astype(np.uint8)


# ------------------------------------------------------------------------------------------ identity, blobs


def _checked(pixels: np.ndarray) -> np.ndarray:
    if not isinstance(pixels, np.ndarray) or pixels.dtype != np.uint8 or pixels.ndim != 3:
        raise ValueError(f"expected (H, W, C) uint8 pixels, got {getattr(pixels, 'dtype', type(pixels))}")
    return np.ascontiguousarray(pixels)


def digest(pixels: np.ndarray) -> str:
    """The picture's identity: sha256 of "{h}x{w}x{c}:" and its bytes in C order."""
    pixels = _checked(pixels)
    h, w, c = pixels.shape
    return hashlib.sha256(f"{h}x{w}x{c}:".encode() + pixels.tobytes()).hexdigest()


def to_blob(pixels: np.ndarray) -> bytes:
    """Pixels -> safetensors bytes: one uint8 tensor "pixels" (h, w, c), its digest in the metadata."""
    pixels = _checked(pixels)
    return save_tensors({"pixels": pixels}, metadata={"digest": digest(pixels)})


def from_blob(blob: bytes) -> np.ndarray:
    """`to_blob`'s bytes -> the pixels; ValueError unless they are (h, w, c) uint8 with the digest recorded."""
    try:
        header = _header(blob, "pixels")
    except PictureError as exc:
        raise ValueError(f"not a pixels blob: {exc.message}") from None
    recorded = (header.get("__metadata__") or {}).get("digest")
    pixels = load_tensors(bytes(blob)).get("pixels")
    if pixels is None or pixels.dtype != np.uint8 or pixels.ndim != 3:
        raise ValueError("not a pixels blob: no (h, w, c) uint8 tensor 'pixels'")
    if recorded != digest(pixels):
        raise ValueError(f"pixels blob: digest {digest(pixels)} is not the recorded {recorded}")
    return pixels


# ------------------------------------------------------------------------------------------------ latents


# A latent's metadata entries that are left out at their default (so that DDIM inversions' files keep their bytes).
LATENT_DEFAULTS = {"sampler": "ddim"}


def latent_key(
    identity: str, steps: int, width: int | None = None, height: int | None = None, sampler: str = "ddim"
) -> dict[str, str]:
    """What an inversion's latent must say in its metadata to start a job: the model's identity, the steps, the sampler
    (the one it was inverted with redraws the picture; DDIM's is left out) and, for a model of several sizes, the width
    and height it was inverted at."""
    size = {} if width is None else {"width": str(width), "height": str(height)}
    how = {} if sampler == LATENT_DEFAULTS["sampler"] else {"sampler": sampler}
    return {"identity": identity, "steps": str(steps), **size, **how}


def latent_mismatch(metadata: dict[str, str], wanted: dict[str, str]) -> tuple[str, str | None, str] | None:
    """The first of `wanted`'s entries (latent_key) that a latent's metadata does not hold: (key, found, wanted). An
    entry left out at its default (LATENT_DEFAULTS) is that default, on either side."""
    for key in dict.fromkeys([*wanted, *LATENT_DEFAULTS]):
        found, value = metadata.get(key, LATENT_DEFAULTS.get(key)), wanted.get(key, LATENT_DEFAULTS.get(key))
        if found != value:
            return key, found, value  # type: ignore[return-value]
    return None


def latent_file(latent: np.ndarray, metadata: dict[str, str]) -> bytes:
    """A latent as safetensors bytes, the same bytes for the same tensor and metadata: one float32 tensor `latent`,
    the header's JSON with sorted keys, padded with spaces to 8 bytes as the format asks (safetensors' own writer
    orders the metadata as its hash map iterates, which changes from one process to the next)."""
    data = np.ascontiguousarray(latent, dtype="<f4").tobytes()
    header = {
        "__metadata__": {str(k): str(v) for k, v in metadata.items()},
        "latent": {"dtype": "F32", "shape": list(latent.shape), "data_offsets": [0, len(data)]},
    }
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


ITEM_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def _header(blob: bytes, tensor: str, field: str = "latent") -> dict[str, Any]:
    """A safetensors file's header (8-byte little-endian length, then JSON), read and checked without torch: the
    length is bounded, `tensor` exists, and every tensor's byte range fits its dtype, shape and the file."""
    if len(blob) < 8:
        raise PictureError(field, "not a safetensors file")
    (length,) = struct.unpack("<Q", blob[:8])
    if length > min(MAX_HEADER_BYTES, len(blob) - 8):
        raise PictureError(field, "not a safetensors file (its header length is out of bounds)")
    try:
        header = json.loads(bytes(blob[8 : 8 + length]).decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise PictureError(field, "not a safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise PictureError(field, "not a safetensors file (its header is not an object)")
    metadata = header.get("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise PictureError(field, "its metadata must map names to strings")
    data = len(blob) - 8 - length
    for name, info in header.items():
        if name != "__metadata__" and not _fits(info, data):
            raise PictureError(field, f"tensor {name!r} does not fit the file")
    if tensor not in header or tensor == "__metadata__":
        raise PictureError(field, f"no tensor {tensor!r}")
    return header


def _fits(info: Any, data: int) -> bool:
    """A header entry {dtype, shape, data_offsets} whose bytes are exactly its shape's, within `data` bytes."""
    try:
        shape, (begin, end) = info["shape"], info["data_offsets"]
        size = ITEM_BYTES[info["dtype"]] * math.prod(shape)
    except (KeyError, TypeError, ValueError):
        return False
    numbers = [*shape, begin, end]
    return all(type(n) is int and n >= 0 for n in numbers) and end - begin == size and end <= data


def latent_metadata(blob: bytes, field: str = "latent") -> dict[str, str]:
    """A latent file's metadata (identity, model, steps, prompt...), read torch-free; PictureError naming `field`
    unless it is a safetensors file with a tensor "latent"."""
    return dict(_header(blob, "latent", field).get("__metadata__") or {})


def latent_shape(blob: bytes, field: str = "latent") -> tuple[int, ...]:
    """The shape of a latent file's tensor "latent", read torch-free (PictureError as `latent_metadata`)."""
    return tuple(_header(blob, "latent", field)["latent"]["shape"])


# --------------------------------------------------------------------------------------------------- gate


class DecodeGate:
    """At most `size` decodes at once in this process: `with gate:` waits up to `timeout_s` for a slot, else raises
    `Busy`. Enter it in the thread that decodes (a blocking wait), never on the event loop."""

    Busy = Busy

    def __init__(self, size: int, timeout_s: float = 5.0):
        if size < 1 or timeout_s < 0:
            raise ValueError(f"DecodeGate(size={size}, timeout_s={timeout_s})")
        self.size = size
        self.timeout_s = timeout_s
        self._slots = threading.BoundedSemaphore(size)

    def __enter__(self) -> DecodeGate:
        if not self._slots.acquire(timeout=self.timeout_s):
            raise Busy(max(1, math.ceil(self.timeout_s)))
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._slots.release()
