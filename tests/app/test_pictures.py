"""Pictures in (app.core.pictures): real files through the one conversion, the bounds on what a file may cost, the
digest, the blobs a worker reads, latent headers and the decode gate; and the PNG encoder's fingerprint."""

import base64
import io
import json
import struct
import subprocess
import sys
import threading
import time
import zlib

import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import save as save_tensors

from app.core import png
from app.core.pictures import (
    Busy,
    DecodeGate,
    PictureError,
    convert,
    convert_mask,
    decode,
    digest,
    from_blob,
    latent_file,
    latent_metadata,
    latent_shape,
    to_blob,
)
from helpers import REPO

MAX_PIXELS = 4096 * 4096
ORIENTATION = 0x0112


def encoded(image: Image.Image, fmt: str = "PNG", **options) -> str:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return base64.b64encode(buffer.getvalue()).decode()


def pixels_of(value: str, width: int, height: int, channels: int = 3) -> np.ndarray:
    return convert(decode(value, "image", MAX_PIXELS), width, height, channels)


def rgb(array) -> Image.Image:
    return Image.fromarray(np.asarray(array, dtype=np.uint8), mode="RGB")


def noise(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


# ------------------------------------------------------------------------------------------------- decode


def test_base64_and_a_data_url_give_the_same_pixels():
    picture = noise(6, 8)
    value = encoded(rgb(picture))
    assert np.array_equal(pixels_of(value, 8, 6), picture)
    assert np.array_equal(pixels_of("data:image/png;base64," + value, 8, 6), picture)
    assert np.array_equal(pixels_of("data:image/jpeg;base64," + value, 8, 6), picture), "the URL's type is not trusted"
    wrapped = "\n".join(value[i : i + 76] for i in range(0, len(value), 76))  # as `base64` writes it
    assert np.array_equal(pixels_of(wrapped, 8, 6), picture)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_png_jpeg_and_webp_are_accepted(fmt):
    image = decode(encoded(rgb(noise(6, 8)), fmt), "image", MAX_PIXELS)
    assert image.format == fmt and image.size == (8, 6)
    assert convert(image, 8, 6, 3).shape == (6, 8, 3)


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "TIFF"])
def test_other_formats_are_refused_naming_the_field(fmt):
    with pytest.raises(PictureError, match="not a PNG, JPEG or WebP") as caught:
        decode(encoded(rgb(noise(6, 8)), fmt), "image_a", MAX_PIXELS)
    assert caught.value.field == "image_a"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("not base64!", "not standard base64"),
        ("", "empty"),
        (base64.b64encode(b"plain text, not a picture").decode(), "not a PNG"),
        ("data:text/plain;base64,aGk=", "data:image/"),
        ("data:image/png,rawbytes", "data:image/"),
    ],
)
def test_what_is_not_an_image_is_refused_naming_the_field(value, message):
    with pytest.raises(PictureError, match=message) as caught:
        decode(value, "mask", MAX_PIXELS)
    assert caught.value.field == "mask"


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_a_truncated_file_is_refused(fmt):
    whole = base64.b64decode(encoded(rgb(noise(64, 64)), fmt))
    with pytest.raises(PictureError, match="image") as caught:
        decode(base64.b64encode(whole[: len(whole) * 2 // 3]).decode(), "image", MAX_PIXELS)
    assert caught.value.field == "image"


def test_the_text_is_bounded():
    value = encoded(rgb(noise(6, 8)))
    with pytest.raises(PictureError, match="longer than"):
        decode(value, "image", MAX_PIXELS, max_chars=len(value) - 1)
    assert decode(value, "image", MAX_PIXELS, max_chars=len(value)).size == (8, 6)


def test_more_pixels_than_the_bound_are_refused_from_the_header():
    value = encoded(rgb(noise(64, 64)))
    with pytest.raises(PictureError, match="64x64 is more than 4095 pixels"):
        decode(value, "image", 4095)
    assert decode(value, "image", 4096).size == (64, 64)


def test_pillows_own_bound_stays_a_backstop(monkeypatch):
    value = encoded(rgb(noise(64, 64)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # its error bound is twice this: 2000 < 4096
    with pytest.raises(PictureError, match="more than 1000 pixels") as caught:
        decode(value, "image", MAX_PIXELS)
    assert caught.value.field == "image"


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb(side: int = 20_000) -> bytes:
    """A complete side x side 1-bit PNG of zeros, written chunk by chunk (about 50 KB for 20000 x 20000)."""
    row = bytes(1 + (side + 7) // 8)  # filter byte 0, then the row's bits
    packer = zlib.compressobj(9)
    stream = b"".join(packer.compress(row * 500) for _ in range(side // 500)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1 bit, greyscale
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", stream) + png_chunk(b"IEND", b"")


def truncated_rgb_bomb(side: int = 20_000) -> bytes:
    """A side x side 8-bit RGB PNG header with a few KB of its stream: decoding it would allocate 1.6 GB first."""
    stream = zlib.compress(bytes(1 + 3 * side) * 50, 9)
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", stream)


def test_the_bombs_are_small():
    assert len(bomb()) < 50_000
    assert len(bomb(9000)) < 12_000
    assert len(truncated_rgb_bomb()) < 4_000


# The peak resident memory may grow this much while the bombs are refused; decoding them would take 400 MB (20000²
# 1-bit: Pillow keeps a byte a pixel), 81 MB (9000²) and 1.6 GB (20000² RGB: 4 bytes a pixel).
BOMB_BOUND_MB = 20
BOMB_SCRIPT = f"""
import base64, resource, sys, time
sys.path[:0] = ["tests", "tests/app"]
from test_pictures import bomb, truncated_rgb_bomb
from app.core.pictures import PictureError, decode
# 20000²: past Pillow's own bound (2 x Image.MAX_IMAGE_PIXELS, refused by Image.open); 9000²: under Pillow's, past ours
values = [base64.b64encode(b).decode() for b in (bomb(), truncated_rgb_bomb(), bomb(9000))]
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for value in values:
    start = time.perf_counter()
    try:
        decode(value, "image", {MAX_PIXELS})
        raise SystemExit("a bomb was decoded")
    except PictureError as exc:
        assert exc.field == "image" and "more than" in str(exc), exc
    print(time.perf_counter() - start)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
"""


def test_a_decompression_bomb_is_refused_in_under_a_second_without_its_memory():
    """In a fresh process, so that the peak resident size (ru_maxrss, KiB on Linux) is this refusal's alone."""
    proc = subprocess.run([sys.executable, "-c", BOMB_SCRIPT], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 0, proc.stderr
    *seconds, grown_mb = (float(line) for line in proc.stdout.split())
    assert max(seconds) < 1.0, seconds
    assert grown_mb < BOMB_BOUND_MB, f"the peak resident memory grew {grown_mb:.1f} MB"


# ------------------------------------------------------------------------------------------------ convert


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_the_exif_orientation_is_applied(fmt):
    stored = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(3, 2, 3) * 14  # 2 wide, 3 high
    exif = Image.Exif()
    exif[ORIENTATION] = 6  # shown turned 90° clockwise
    options = {"lossless": True} if fmt == "WEBP" else {}
    out = pixels_of(encoded(rgb(stored), fmt, exif=exif.tobytes(), **options), 3, 2)
    assert out.shape == (2, 3, 3)  # 3 wide, 2 high
    assert np.array_equal(out, np.rot90(stored, k=-1))  # clockwise
    assert np.array_equal(out[0, 2], stored[0, 0]) and np.array_equal(out[0, 0], stored[2, 0])


def test_a_jpeg_exif_orientation_turns_it_too():
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    image = decode(encoded(rgb(noise(3, 2)), "JPEG", exif=exif.tobytes()), "image", MAX_PIXELS)
    assert image.size == (2, 3) and convert(image, 3, 2, 3).shape == (2, 3, 3)


def test_alpha_is_composited_onto_white():
    rgba = np.array([[[0, 0, 0, 128], [255, 0, 0, 128], [100, 200, 50, 128], [9, 9, 9, 0], [1, 2, 3, 255]]], np.uint8)
    out = pixels_of(encoded(Image.fromarray(rgba, mode="RGBA")), 5, 1)
    c, a = rgba[..., :3].astype(float), rgba[..., 3:].astype(float)
    assert np.array_equal(out, np.round((c * a + 255 * (255 - a)) / 255).astype(np.uint8))
    assert out[0, 0].tolist() == [127, 127, 127] and out[0, 1].tolist() == [255, 127, 127]
    assert out[0, 3].tolist() == [255, 255, 255] and out[0, 4].tolist() == [1, 2, 3]


def test_sixteen_bit_greyscale_is_scaled_not_clipped():
    wide = np.array([[0, 255, 32896, 65535]], np.uint16)
    image = Image.fromarray(wide)  # I;16
    decoded = decode(encoded(image), "image", MAX_PIXELS)
    assert decoded.mode.startswith("I")
    assert np.asarray(decoded.convert("L")).tolist() == [[0, 255, 255, 255]]  # Pillow's own conversion clips
    assert convert(decoded, 4, 1, 1)[..., 0].tolist() == [[0, 0, 128, 255]]
    assert convert(decoded, 4, 1, 3)[0, 2].tolist() == [128, 128, 128]


def test_sixteen_bit_colour_keeps_its_high_byte():
    """Pillow reads 16-bit RGB PNGs by their high byte already: the same rule as greyscale's."""
    wide = np.array([[[65535, 32896, 0]]], np.uint16)
    raw = zlib.compress(b"\x00" + wide.astype(">u2").tobytes())
    header = struct.pack(">IIBBBBB", 1, 1, 16, 2, 0, 0, 0)
    file = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", raw) + png_chunk(b"IEND", b"")
    assert pixels_of(base64.b64encode(file).decode(), 1, 1).tolist() == [[[255, 128, 0]]]


def test_palette_and_greyscale_become_rgb():
    palette = Image.new("P", (2, 1))
    palette.putpalette([10, 20, 30, 200, 100, 0] + [0] * 762)
    palette.putpixel((1, 0), 1)
    assert pixels_of(encoded(palette), 2, 1).tolist() == [[[10, 20, 30], [200, 100, 0]]]
    palette.info["transparency"] = 1  # a transparent palette entry: white
    assert pixels_of(encoded(palette, transparency=1), 2, 1).tolist() == [[[10, 20, 30], [255, 255, 255]]]
    grey = Image.fromarray(np.array([[7, 250]], np.uint8), mode="L")
    assert pixels_of(encoded(grey), 2, 1).tolist() == [[[7, 7, 7], [250, 250, 250]]]
    assert pixels_of(encoded(grey.convert("1")), 2, 1).tolist() == [[[0, 0, 0], [255, 255, 255]]]


def test_rgb_to_one_channel_is_pillows_luma():
    picture = noise(5, 7)
    out = pixels_of(encoded(rgb(picture)), 7, 5, channels=1)
    assert out.shape == (5, 7, 1)
    assert np.array_equal(out[..., 0], np.asarray(rgb(picture).convert("L")))


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_an_animated_file_gives_its_first_frame(fmt):
    frames = [Image.new("RGB", (4, 4), colour) for colour in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    value = encoded(frames[0], fmt, save_all=True, append_images=frames[1:], lossless=True, duration=100)
    image = decode(value, "image", MAX_PIXELS)
    assert getattr(image, "n_frames", 1) == 3
    assert convert(image, 4, 4, 3)[..., :].reshape(-1, 3).tolist() == [[255, 0, 0]] * 16


def test_a_centre_crop_keeps_the_centre():
    picture = np.full((6, 8, 3), 128, np.uint8)
    picture[:, 0], picture[:, 7] = (255, 0, 0), (0, 0, 255)  # the edges a 1:1 crop drops
    picture[:, 1:7] = np.arange(6, dtype=np.uint8)[None, :, None] * 40
    square = pixels_of(encoded(rgb(picture)), 6, 6)  # the crop is the target's size: no resize
    assert np.array_equal(square, picture[:, 1:7])
    small = pixels_of(encoded(rgb(picture)), 3, 3)
    assert small.shape == (3, 3, 3) and not (small[..., 0] > small[..., 1] + 50).any()  # no red came in
    tall = pixels_of(encoded(rgb(picture)), 2, 6)  # 1:3 of an 8x6: columns 3 and 4
    assert np.array_equal(tall, picture[:, 3:5])


def test_a_picture_at_the_size_passes_unchanged():
    picture = noise(32, 32)
    assert np.array_equal(pixels_of(encoded(rgb(picture)), 32, 32), picture)


def test_the_digest_is_of_the_pixels_not_the_file():
    picture = rgb(noise(24, 32))
    fast, small = encoded(picture, compress_level=0), encoded(picture, compress_level=9)
    assert fast != small
    assert digest(pixels_of(fast, 16, 16)) == digest(pixels_of(small, 16, 16))
    assert digest(pixels_of(encoded(picture, "JPEG", quality=90), 16, 16)) != digest(pixels_of(small, 16, 16))


def test_the_digest_covers_the_shape():
    flat = np.zeros((2, 6, 1), np.uint8)
    assert digest(flat) != digest(flat.reshape(6, 2, 1)) != digest(flat.reshape(2, 2, 3))
    assert digest(flat) == digest(np.zeros((2, 6, 1), np.uint8))
    with pytest.raises(ValueError):
        digest(flat.astype(np.float32))


# --------------------------------------------------------------------------------------------------- mask


def test_a_mask_is_box_resized_then_thresholded_at_128():
    # 2x2 blocks' means: 135, 115, 127.75
    grey = np.array([[120, 130, 100, 110, 127, 128], [140, 150, 120, 130, 127, 129]], np.uint8)
    value = encoded(Image.fromarray(grey, mode="L"))
    mask = convert_mask(decode(value, "mask", MAX_PIXELS), 3, 1)
    assert mask.shape == (1, 3, 1) and mask.dtype == np.uint8
    assert mask[..., 0].tolist() == [[255, 0, 255]]  # 127.75 rounds to 128
    exact = convert_mask(decode(value, "mask", MAX_PIXELS), 6, 2)
    assert exact[..., 0].tolist() == [[0, 255, 0, 0, 0, 255], [255, 255, 0, 255, 0, 255]]


def test_a_colour_mask_with_alpha_is_read_onto_white():
    rgba = np.array([[[0, 0, 0, 255], [0, 0, 0, 0], [255, 255, 255, 255]]], np.uint8)
    mask = convert_mask(decode(encoded(Image.fromarray(rgba, mode="RGBA")), "mask", MAX_PIXELS), 3, 1)
    assert mask[..., 0].tolist() == [[0, 255, 255]]


# -------------------------------------------------------------------------------------------------- blobs


def test_a_blob_round_trips_and_checks_its_digest():
    pixels = noise(5, 7)
    blob = to_blob(pixels)
    back = from_blob(blob)
    assert back.dtype == np.uint8 and np.array_equal(back, pixels)
    header = json.loads(blob[8 : 8 + struct.unpack("<Q", blob[:8])[0]])
    assert header["__metadata__"] == {"digest": digest(pixels)}
    tampered = bytearray(blob)
    tampered[-1] ^= 1
    with pytest.raises(ValueError, match="digest"):
        from_blob(bytes(tampered))
    with pytest.raises(ValueError):
        from_blob(save_tensors({"pixels": pixels.astype(np.float32)}, metadata={"digest": digest(pixels)}))
    with pytest.raises(ValueError, match="not a pixels blob: no tensor 'pixels'") as caught:
        from_blob(save_tensors({"latent": pixels}))
    assert not isinstance(caught.value, PictureError), "a broken blob is ours, not the request's"


# ------------------------------------------------------------------------------------------------ latents


def test_latent_metadata_and_shape_are_read_without_torch():
    latent = np.zeros((4, 8, 8), np.float32)
    metadata = {"model": "tiny@1", "identity": "a" * 64, "steps": "50", "prompt": "a cat"}
    blob = save_tensors({"latent": latent}, metadata=metadata)
    assert latent_metadata(blob) == metadata
    assert latent_shape(blob) == (4, 8, 8)
    assert latent_metadata(save_tensors({"latent": latent})) == {}


def malformed_latents() -> dict[str, bytes]:
    good = save_tensors({"latent": np.zeros((2, 2), np.float32)})
    length = struct.unpack("<Q", good[:8])[0]

    def with_header(header: dict) -> bytes:
        text = json.dumps(header).encode()
        return struct.pack("<Q", len(text)) + text + good[8 + length :]

    entry = {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}
    return {
        "short": b"\x01\x02",
        "huge length": struct.pack("<Q", 2**40) + b"{}",
        "length past the end": struct.pack("<Q", 100) + b"{}",
        "not JSON": struct.pack("<Q", 4) + b"\xff\xfe{}" + bytes(16),
        "not an object": with_header([1, 2]),  # type: ignore[arg-type]
        "no latent": with_header({"pixels": entry}),
        "offsets past the data": with_header({"latent": {**entry, "data_offsets": [0, 32]}}),
        "offsets not the shape": with_header({"latent": {**entry, "shape": [3, 2]}}),
        "unknown dtype": with_header({"latent": {**entry, "dtype": "X9"}}),
        "negative shape": with_header({"latent": {**entry, "shape": [-2, -2]}}),
        "metadata not strings": with_header({"latent": entry, "__metadata__": {"steps": 50}}),
        "a pickle": b"\x80\x04\x95" + bytes(64),
    }


@pytest.mark.parametrize("name", sorted(malformed_latents()))
def test_a_malformed_latent_is_refused_naming_the_field(name):
    with pytest.raises(PictureError) as caught:
        latent_metadata(malformed_latents()[name], field="latent_b")
    assert caught.value.field == "latent_b"
    with pytest.raises(PictureError):
        latent_shape(malformed_latents()[name])


# --------------------------------------------------------------------------------------------------- gate


def test_the_gate_bounds_the_decodes_at_once():
    gate, lock = DecodeGate(2, timeout_s=10), threading.Lock()
    inside, most = [0], [0]

    def decode_one():
        with gate:
            with lock:
                inside[0] += 1
                most[0] = max(most[0], inside[0])
            time.sleep(0.05)
            with lock:
                inside[0] -= 1

    threads = [threading.Thread(target=decode_one) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most[0] == 2 and inside[0] == 0


def test_the_gate_gives_up_after_its_wait():
    gate = DecodeGate(1, timeout_s=0.1)
    caught = []

    def late():
        start = time.perf_counter()
        try:
            with gate:
                pass
        except Busy as exc:
            caught.append((exc, time.perf_counter() - start))

    with gate:
        thread = threading.Thread(target=late)
        thread.start()
        thread.join()
    ((busy, waited),) = caught
    assert 0.09 <= waited < 1.0 and busy.retry_after_s == 1 and DecodeGate.Busy is Busy
    with gate:  # the slot came back
        pass


# ------------------------------------------------------------------------------------------------ encoder


@pytest.fixture
def fresh_fingerprint():
    png.encoder_fingerprint.cache_clear()
    yield png.encoder_fingerprint
    png.encoder_fingerprint.cache_clear()


def test_the_encoder_fingerprint_is_stable(fresh_fingerprint):
    first = fresh_fingerprint()
    assert len(first) == 16 and int(first, 16) >= 0
    assert fresh_fingerprint() == first
    fresh_fingerprint.cache_clear()
    assert fresh_fingerprint() == first


def test_the_encoder_fingerprint_follows_the_png_bytes(fresh_fingerprint, monkeypatch):
    first = fresh_fingerprint()
    encode = png.encode_png
    monkeypatch.setattr(png, "encode_png", lambda pixels, parameters=None: encode(pixels, parameters) + b"\x00")
    fresh_fingerprint.cache_clear()
    assert fresh_fingerprint() != first


def test_the_encoder_fingerprint_names_pillows_zlib(fresh_fingerprint, monkeypatch):
    first = fresh_fingerprint()
    version = png.features.version
    monkeypatch.setattr(png.features, "version", lambda name: "9.9.9" if name == "zlib_ng" else version(name))
    fresh_fingerprint.cache_clear()
    assert fresh_fingerprint() != first


def test_a_latent_file_is_the_same_bytes_for_the_same_tensor_and_metadata():
    from safetensors.numpy import load as load_numpy

    latent = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4) / 7
    meta = {"steps": "50", "identity": "a" * 64, "model": "m@1", "prompt": "null"}
    blob = latent_file(latent, meta)
    assert blob == latent_file(latent, dict(reversed(list(meta.items()))))
    assert np.array_equal(load_numpy(blob)["latent"], latent)
    assert latent_metadata(blob) == meta and latent_shape(blob) == (2, 3, 4)
    assert int.from_bytes(blob[:8], "little") % 8 == 0
