"""An engine: one loaded model on one device type at one precision, ready to run DDIM.

The engine does not know the model's kind: its kind module (worker.kinds) gives the network, the time
grid, the parameterisation and the pixels. The engine key (model identity, seed, steps, eta, for a text
model the normalised prompt and guidance, device type, precision) fixes the PNG bytes. At load
the engine probes its kernels (diffusion.kernels): which call sizes keep a row's bits, and a
fingerprint of their arithmetic, which becomes part of the engine's id (`cpu/fp32/<kernels>`).
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from app.core.png import encoder_fingerprint
from app.core.spec import Spec
from diffusion.ddim import DDIMRun, Picture, Step, clamped, draw, generators, last_step, sample_loop, start_step
from diffusion.denoiser import Denoiser
from diffusion.guidance import Condition, Guidance
from diffusion.inversion import InverseStep, invert
from diffusion.kernels import Probe, probe_inputs, reference_rows, row_flops
from diffusion.probe_cache import machine_key
from diffusion.samplers import get as get_sampler
from model_store import Manifest, ModelStoreError, Store, kinds
from model_store.bounds import INVERSION_REFINE
from model_store.samplers import refusal
from worker.kinds import KindModel, model_for
from worker.memory import (
    STEP_COPIES,
    Memory,
    budget_bytes,
    max_batch,
    parameter_bytes,
    peak_bytes,
    reference_cap,
)

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}
# The reference call: the most rows one network call has; the probe keeps the smaller sizes that agree with it.
REFERENCE_ROWS = {"cpu": 16, "cuda": 128}
COMPILED_SIZES = (1, 2, 4, 8, 16)  # with `compile`, the call sizes probed (each one is a compilation)
FINGERPRINT_CHARS = 16
# Fixed-point iterations per inverse step (diffusion.inversion): model_store.bounds.INVERSION_REFINE, which the API's
# estimate of a job's work and its engine key read too.
REFINE = INVERSION_REFINE


def resolve_device(device: str) -> str:
    """'auto' picks CUDA when present; 'cuda' without a GPU is an error."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelStoreError("device 'cuda' asked for, but no CUDA GPU is available")
    if device not in ("cpu", "cuda"):
        raise ModelStoreError(f"unknown device {device!r}: use auto, cpu or cuda")
    return device


def bf16_supported(device: str) -> bool:
    """Whether `device` has native bf16 kernels: on a CPU, oneDNN's (AVX-512 BF16 or AMX). Without them
    bf16 runs on emulated kernels, slower than fp32, so it is not offered."""
    if device == "cuda":
        return torch.cuda.is_bf16_supported()
    supported = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(supported is not None and torch.backends.mkldnn.is_available() and supported())


def check_precision(device: str, precision: str) -> None:
    if precision not in PRECISIONS:
        raise ModelStoreError(f"unknown precision {precision!r}: use fp32 or bf16")
    if precision == "bf16" and not bf16_supported(device):
        what = "this GPU" if device == "cuda" else "this CPU (no AVX-512 BF16 or AMX)"
        raise ModelStoreError(f"{what} has no native bf16 kernels; use fp32")


Size = tuple[int, int] | None  # a model of several sizes: (width, height); None: a model's one size


@dataclass(frozen=True)
class PictureIn:
    """A row's picture, as a job gives it: its converted pixels, its strength (of the grid, the last
    int(steps·strength) steps run), its mask (white: repaint), at the image's size, and with a mask RePaint's jumps per
    step (`harmonize`)."""

    pixels: np.ndarray  # (H, W, C) uint8
    strength: float
    mask: np.ndarray | None = None  # (H, W, 1) uint8 {0, 255}
    harmonize: int = 0


# Where a run's rows start, other than their seed's noise: every row's x_T, or per row an x_T, a picture or None.
Start = torch.Tensor | Sequence["PictureIn | torch.Tensor | None"] | None


@dataclass
class Engine:
    manifest: Manifest
    model: KindModel
    denoiser: Denoiser  # the default size's (the model's one size, for most kinds)
    device: str
    precision: str
    probe: Probe
    sized: dict[Size, tuple[Denoiser, Probe]] = field(default_factory=dict)  # every size's, when it has several
    memory: Memory | None = None  # what the model takes in memory, and the batch its budget allows (worker.memory)

    @property
    def max_batch(self) -> int | None:
        """The most samples one batch may hold within the memory budget; None: unbounded by memory."""
        return None if self.memory is None else self.memory.max_batch

    @property
    def kernels(self) -> str:
        """Names the arithmetic: workers with the same kernels value give the same bytes. A model of several sizes
        has a probe per size (which call sizes keep a row's bits depends on the tensor's shape): its kernels name
        every size's fingerprint."""
        if len(self.sized) <= 1:
            return self.probe.fingerprint[:FINGERPRINT_CHARS]
        each = [[*size, probe.fingerprint] for size, (_, probe) in self.sized.items()]
        return hashlib.sha256(json.dumps(each).encode()).hexdigest()[:FINGERPRINT_CHARS]

    def denoiser_at(self, size: Size) -> Denoiser:
        """The network's caller for images of this size, with the call sizes its probe kept."""
        if size is None or not self.sized:
            self.model.shape_at(size)  # a size given to a model of one size is refused
            return self.denoiser
        if size not in self.sized:
            raise ModelStoreError(f"{self.manifest.ref} makes no {size[0]}x{size[1]} image")
        return self.sized[size][0]

    @property
    def encoder(self) -> str:
        """Names the PNG encoder (app.core.png.encoder_fingerprint): Pillow builds with another zlib give other bytes
        for the same pixels, so the encoder is part of the engine as the kernels are."""
        return encoder_fingerprint()

    @property
    def id(self) -> str:
        """`device/precision/kernels/encoder`: what a model's workers must share (worker.heartbeat, app.core.runs)."""
        return f"{self.device}/{self.precision}/{self.kernels}/{self.encoder}"

    @property
    def shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of one sample of the default size."""
        return self.model.shape

    def batch_key(self, spec: Spec) -> tuple:
        """Jobs with equal batch keys run as rows of one batch: the spec's (app.core.spec.Spec.batch_key), and the grid
        its sampler calls the network on (a continuous-time kind has one for all; a diffusers model's DDIM and
        multistep grids differ)."""
        return (*spec.batch_key(), self.model.grid_key(spec.sampler))

    def record(self) -> dict[str, str]:
        """A finished job's `engine`: what ran it (app.schemas.Engine)."""
        return {"device": self.device, "precision": self.precision, "kernels": self.kernels, "encoder": self.encoder}

    def run(
        self,
        seeds: Sequence[int],
        steps: int,
        etas: Sequence[float],
        starts: Start = None,
        conditions: Sequence[Condition] | None = None,
        size: Size = None,
        samplers: Sequence[str] | None = None,
    ) -> DDIMRun:
        """A batch's run on the kind's grid; iterate it for each step (x0 predictions in model space). Each row runs its
        sampler (`samplers`, model_store.samplers; all DDIM by default); rows of one run share the grid their samplers
        call the network on (KindModel.grid_key).

        A text model's samples are guided, each by its own condition (`condition`; none: the empty prompt). A model
        of several sizes makes the (width, height) `size` (its default for None). `starts` says where rows start other
        than from their seed's noise: every row's x_T (a (B, C, H, W) tensor), or one entry per row: its x_T (a tensor:
        an inversion's latent), its picture (a `PictureIn`: image-to-image; inpainting with its mask and its
        `harmonize`) or None (its seed's noise). Each row's generator is its
        seed's: a latent kind's picture takes its VAE sample from it first (diffusion.ddim.DDIMRun says the order of
        the draws)."""
        samplers = list(samplers) if samplers is not None else ["ddim"] * len(seeds)
        grids = {self.model.grid_key(name) for name in samplers}
        if len(grids) > 1:
            names = sorted(set(samplers))
            raise ModelStoreError(f"{self.manifest.ref}: samplers {names} call the network at other times")
        grid = self.model.grid_of(steps, samplers[0] if samplers else "ddim")
        guidance = None
        if self.model.conditioned:
            conditions = list(conditions) if conditions is not None else [Condition(None)] * len(seeds)
            guidance = Guidance(self.model.embed(""), conditions)
        elif conditions is not None and any(c.embedding is not None for c in conditions):
            raise ModelStoreError(f"{self.manifest.ref} takes no prompt")
        denoiser, shape = self.denoiser_at(size), self.model.shape_at(size)
        gens = generators(seeds)
        whole = starts if isinstance(starts, torch.Tensor) else None
        each = None if starts is None or whole is not None else list(starts)
        pictures = None if each is None else [s if isinstance(s, PictureIn) else None for s in each]
        latents = None if each is None else [s if isinstance(s, torch.Tensor) else None for s in each]
        rows = None if pictures is None else self.picture_rows(pictures, gens, steps, size)
        harmonize = [0 if p is None else p.harmonize for p in pictures] if pictures is not None else 0
        return sample_loop(
            denoiser, seeds, steps, shape, eta=list(etas), device=self.device, x_T=whole, grid=grid,
            read=self.model.read, clip=self.model.clip, guidance=guidance, pictures=rows, harmonize=harmonize,
            gens=gens, latents=latents, samplers=samplers,
        )  # fmt: skip

    def picture_rows(
        self, pictures: Sequence[PictureIn | None], gens: Sequence[torch.Generator], steps: int, size: Size
    ) -> list[Picture | None]:
        """Each picture in model space (its row's generator for a sampling encoder, one row per call), its start
        step and its mask."""
        image_shape = self.model.image_shape_at(size)
        rows: list[Picture | None] = []
        for picture, gen in zip(pictures, gens, strict=True):
            if picture is None:
                rows.append(None)
                continue
            channels, height, width = image_shape
            if picture.pixels.shape != (height, width, channels) or picture.pixels.dtype != np.uint8:
                raise ModelStoreError(
                    f"{self.manifest.ref}: a picture must be {width}x{height}x{channels} uint8, got "
                    f"{picture.pixels.shape} {picture.pixels.dtype}"
                )
            x0 = self.model.to_model(picture.pixels[None], [gen])[0]
            mask = None if picture.mask is None else self.model.mask_to_model(picture.mask[None])[0]
            rows.append(Picture(x0, start_step(steps, picture.strength), mask))
        return rows

    def images(self, step: Step, pictures: Sequence[PictureIn | None] | None = None) -> np.ndarray:
        """(B, H, W, C) uint8 images of a run's last step. `pictures` are the step's rows' (after any `drop`): a row
        that ran no step (strength 0) is its input, and a masked row takes the kept region (mask 0) from its input,
        pixel for pixel."""
        images = self.pixels(self.model.final(step))
        for i, picture in enumerate(pictures or []):
            if not isinstance(picture, PictureIn):  # a seed's row, or an inversion's latent
                continue
            if start_step(step.steps, picture.strength) == step.steps:
                images[i] = picture.pixels
            elif picture.mask is not None:
                kept = np.broadcast_to(picture.mask < 128, picture.pixels.shape)
                images[i][kept] = picture.pixels[kept]
        return images

    def invert(
        self,
        pixels: Sequence[np.ndarray],
        steps: int,
        conditions: Sequence[Condition] | None = None,
        size: Size = None,
        refine: int | None = None,
        sampler: str = "ddim",
    ) -> Iterator[InverseStep]:
        """Inversion of pictures ((H, W, C) uint8 each) by `sampler` (DDIM, or DPM-Solver++(2M), naive) over the kind's
        `steps`-step grid for it (diffusion.inversion); DDIM with `refine` fixed-point iterations per step (REFINE by
        default; 0: naive). Yields every inverse step; the last
        one's x is the latents x_T (B, C, h, w), float32 on the CPU. A text model inverts under `conditions` (a
        prompt at guidance 1: `condition(prompt, 1.0)`; none: the empty prompt)."""
        if refused := refusal(sampler, inverting=True):
            raise ModelStoreError(refused[1])
        if self.model.conditioned:
            conditions = list(conditions) if conditions is not None else [Condition(None)] * len(pixels)
            guidance = Guidance(self.model.embed(""), conditions)
        elif conditions is not None and any(c.embedding is not None for c in conditions):
            raise ModelStoreError(f"{self.manifest.ref} takes no prompt")
        else:
            guidance = None
        channels, height, width = self.model.image_shape_at(size)
        for p in pixels:
            if p.shape != (height, width, channels) or p.dtype != np.uint8:
                raise ModelStoreError(f"{self.manifest.ref}: a picture must be {width}x{height}x{channels} uint8")
        x = self.model.to_model(np.stack(list(pixels)), None).to(self.device)
        how = get_sampler(sampler)
        multistep = how.multistep
        read = clamped(self.model.read, self.model.clip) if how.clips else self.model.read  # DDIM's clamp
        found = invert(
            self.denoiser_at(size), self.model.grid_of(steps, sampler), x, read, self.model.image_is_x0,
            0 if multistep else REFINE if refine is None else refine, guidance, multistep,
        )  # fmt: skip
        return (InverseStep(step.step, step.steps, step.x.float().cpu()) for step in found)

    def reconstruct(
        self,
        latents: Sequence[torch.Tensor],
        steps: int,
        conditions: Sequence[Condition] | None = None,
        size: Size = None,
        sampler: str = "ddim",
    ) -> DDIMRun:
        """The run (eta 0) from inverted latents with the inversion's sampler: an inversion's picture back."""
        n = len(latents)
        x_T, samplers = list(latents), [sampler] * n
        return self.run([0] * n, steps, [0.0] * n, x_T, conditions=conditions, size=size, samplers=samplers)

    def condition(self, prompt: str | None, guidance: float | None, negative: str | None = None) -> Condition:
        """A sample's condition, by its kind's rules (worker.kinds.KindModel.condition): its (normalised) prompt's
        embedding, or none, its guidance scale, and a negative prompt's embedding where the kind takes one."""
        return self.model.condition(prompt, guidance, negative)

    def initial_noise(self, seed: int, size: Size = None) -> torch.Tensor:
        """x_T of a seed: the first draw of its generator, exactly as a generation job draws it."""
        return draw(generators([seed]), self.model.shape_at(size))[0]

    def generate(
        self,
        seeds: Sequence[int],
        steps: int,
        etas: Sequence[float],
        conditions: Sequence[Condition] | None = None,
        size: Size = None,
        samplers: Sequence[str] | None = None,
    ) -> np.ndarray:
        """(B, H, W, C) uint8 final images."""
        run = self.run(seeds, steps, etas, conditions=conditions, size=size, samplers=samplers)
        return self.pixels(self.model.final(last_step(run)))

    def pixels(self, x0: torch.Tensor) -> np.ndarray:
        return self.model.pixels(x0)

    def model_parameters(self) -> dict:
        """What every PNG of this engine says of its model and engine (DESIGN.md, Encoding)."""
        m = self.manifest
        return {
            "model": m.name,
            "version": m.version,
            "digest": m.digest,
            "identity": m.identity,
            "device": self.device,
            "precision": self.precision,
        }

    def parameters(self, spec: Spec) -> dict:
        """The PNG `parameters` chunk (DESIGN.md): the spec's part of the engine key (app.core.spec), plus the model
        and the engine. A model's PNG names every request field its kind takes, null when the job has none (a text
        model's prompt and guidance, for a prompt-free sample)."""
        kind = kinds.of(self.manifest)
        named = kind.fields if kind.named is None else kind.named
        taken = {name: None for name in named if name in spec.request_names()}
        return {**taken, **spec.png_parameters(), **self.model_parameters()}


def check_compile(device: str, compile: bool) -> None:
    if not compile:
        return
    if device != "cpu":
        raise ModelStoreError("compile is for the CPU engine; on CUDA the engine replays CUDA graphs instead")
    if not (shutil.which("c++") or shutil.which("g++")):
        raise ModelStoreError("compile needs a C++ compiler (c++ or g++ on PATH) for torch.compile on the CPU")


def load_engine(
    ref: str,
    store: Store | None = None,
    device: str = "auto",
    precision: str = "fp32",
    compile: bool = False,
    probe_cache: Path | None = None,
    memory_budget_mb: int | None = None,
) -> Engine:
    """The model `ref` on `device` at `precision`, its kernels probed; `compile`: through torch.compile (CPU).
    `probe_cache`: a directory of cached probes (diffusion.probe_cache; not with compile, whose every call
    shape must be compiled by the probe). `memory_budget_mb`: what the model may take (worker.memory), else most of
    the device's memory; a model whose weights do not fit is refused."""
    store = store or Store()
    device = resolve_device(device)
    check_precision(device, precision)
    check_compile(device, compile)
    manifest = store.resolve(ref)
    model = model_for(manifest)  # an unknown kind, or one stored but not served (a feature extractor), is refused
    net = model.network(device)
    budget, parameters = budget_bytes(memory_budget_mb, device), parameter_bytes(model.parts(net))
    if parameters > budget:
        raise ModelStoreError(
            f"{manifest.ref}: its weights take {parameters / 2**20:,.0f} MB, over the memory budget of "
            f"{budget / 2**20:,.0f} MB (DIFFUSETV_MEMORY_BUDGET_MB)"
        )
    if device == "cuda":
        torch.backends.cudnn.benchmark = False  # the same kernels on every call
        torch.backends.cudnn.deterministic = True
    reference = REFERENCE_ROWS[device]
    if device == "cpu":  # a large network calls one row at a time (diffusion.kernels.reference_rows)
        one = model.probe_conditions(1)
        extra = () if one is None else (one.to(device),)
        flops = row_flops(lambda x, t: net(x, model.time_input(t), *extra), model.shape)
        reference = reference_rows(flops, device, reference)
    largest = max(model.all_sizes(), key=lambda size: math.prod(model.shape_at(size)))
    if device == "cuda":  # the reference call's rows fit the budget beside the weights
        one_row = peak_bytes(lambda: call(net, model, largest, 1, device), device)
        reference = reference_cap(budget, parameters, one_row, reference)
    conditions = model.probe_conditions(reference)  # a conditioned network is probed as it runs
    key = {"identity": manifest.identity, "device": device, "precision": precision, **machine_key(device)}
    cache = None if compile else probe_cache
    sized: dict[Size, tuple[Denoiser, Probe]] = {}
    for size in model.all_sizes():  # each size its own probe: which call sizes keep a row's bits depends on the shape
        denoiser = Denoiser(
            net,
            manifest.mean,
            manifest.std,
            channels_last=True,
            autocast_dtype=PRECISIONS[precision],
            cuda_graphs=True,
            compile=compile,
            time_input=model.time_input,
        )
        candidates = COMPILED_SIZES if compile else None
        found = denoiser.calibrate(model.shape_at(size), reference, candidates, conditions, cache, key)
        sized[size] = (denoiser, found)
    denoiser, found = next(iter(sized.values()))
    memory = measure(model, net, largest, sized[largest][1].shapes.largest, device, budget, parameters)
    return Engine(manifest, model, denoiser, device, precision, found, sized if len(sized) > 1 else {}, memory)


def call(net: torch.nn.Module, model: KindModel, size: Size, rows: int, device: str) -> None:
    """One network call of `rows` probe rows at `size`, as the engine calls it (for memory)."""
    x, t = probe_inputs(rows, model.shape_at(size), device)
    conditions = model.probe_conditions(rows)
    extra = () if conditions is None else (conditions.to(device),)
    with torch.inference_mode():
        net(x, model.time_input(t), *extra)


def measure(
    model: KindModel, net: torch.nn.Module, size: Size, rows: int, device: str, budget: int, parameters: int
) -> Memory:
    """The model's memory (worker.memory): its largest call's peak and its image decode's, at its largest size."""
    shape = model.shape_at(size)
    calls = peak_bytes(lambda: call(net, model, size, rows, device), device)
    decode = peak_bytes(lambda: model.pixels(torch.zeros((1, *shape), device=device)), device)
    activations = max(calls or 0, decode or 0)
    channels, height, width = model.image_shape_at(size)
    condition = model.probe_conditions(1)
    per_sample = (
        STEP_COPIES * math.prod(shape) * 4  # the sample's latents and its step's temporaries, fp32
        + height * width * channels * 5  # its decoded image, fp32 and uint8
        + (0 if condition is None else 2 * condition.numel() * 4)  # its prompt's and its unconditional embedding
    )
    found = max_batch(budget, parameters, activations, per_sample, cap=2**20)
    return Memory(parameters, activations, rows, per_sample, budget, found, calls is not None and decode is not None)
