"""Stable Diffusion against diffusers: one pipeline's modules through our engine and through StableDiffusionPipeline.

    python -m bench sd [--pipeline tiny|sd-1.5] [--cache DIR] [--resume] [--repeats N] [--steps N] [--threads N]
                       [--json FILE] [--quick]

The pipelines (bench.sd_pipeline) have random weights, in fp32: `tiny`, and `sd-1.5` with Stable Diffusion 1.5's
configs, imported with `diffusetv import diffusers` and cached. Both sides make the same images: a prompt at guidance
7.5 (two UNet rows per image), eta 0, seeds 0..B-1, at the pipeline's size (256x256 for sd-1.5).

- **Ours**: the worker's engine (`load_engine`, its probe cached under the cache directory), the whole process:
  `engine.condition` (the CLIP text encoder; the embedding cache is emptied before every run, so each run encodes
  its prompt and the empty one) and `engine.generate` (the DDIM loop, then the VAE decode one row per call).
- **Theirs**: `StableDiffusionPipeline` built from the engine's own `unet`, `vae` and `text_encoder` objects, with the
  pipeline folder's CLIPTokenizer and DDIMScheduler, called as `pipe(prompt=[p] * B, num_inference_steps=steps,
  guidance_scale=7.5, height=H, width=W, generator=[one per seed], output_type="np")` under inference mode. The
  same objects make the weights the same by construction and hold one copy in memory (SD 1.5 in fp32 twice would be
  8.6 GB). The engine converts its UNet's weights to channels_last at load; a plain diffusers UNet's are contiguous,
  so before each side's run (outside the timed region) the shared UNet's weights are put in that side's layout:
  channels_last for ours, contiguous for theirs. A layout changes no value.

Each repeat times both sides back to back, which goes first alternating, and the ratio is taken within a repeat;
figures are medians over repeats, after a one-step warm-up of each side at each batch. Each run's images are
compared with the other side's (the parity: max difference in 8-bit levels, the first image's apart). Progress is
checkpointed in the cache after every repeat: `--resume` continues an interrupted run of the same settings (each
repeat is still one process's pair).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from bench.flops import torch_threads
from bench.report import cpu_model, fmt, median, table, timings
from bench.sd_pipeline import DEFAULT_CACHE, MODEL, SHAPES, Shape, prepared

BATCHES = (1, 4)
DEFAULTS = {"repeats": 3, "steps": 10, "threads": 2, "pipeline": None, "cache": None, "resume": False}
QUICK = {"repeats": 1, "steps": 2, "pipeline": "tiny"}
PROMPT = "a photograph of a red heart on the moon"
GUIDANCE = 7.5
GOAL_BATCH_1 = 0.9  # ours/theirs in images/s at batch 1
# docs/BENCHMARKS.md, Against diffusers: the ceiling of one-row calls on the ddpm-cifar10-32 architecture, batch 8.
DOCUMENTED_CEILING = "0.76x to 0.82x"
PARTS = ("unet", "vae", "text_encoder")
CHECKPOINT = 2  # the checkpoint's format: one of another is not resumed


def rss() -> int | None:
    """The process's resident set now (VmRSS), in bytes; None where /proc cannot say."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class PeakRSS:
    """The most RSS seen while inside, sampled every `every` seconds by a thread (the RSS at the end included).
    Sampled, not the kernel's high-water mark: the engine resets that (VmHWM) while it measures its model at load."""

    def __init__(self, every: float = 0.05) -> None:
        self.every, self.peak = every, 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.watch, daemon=True)

    def watch(self) -> None:
        while True:
            self.peak = max(self.peak, rss() or 0)
            if self.done.wait(self.every):
                return

    def __enter__(self) -> PeakRSS:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.thread.join()
        self.peak = max(self.peak, rss() or 0)


@contextlib.contextmanager
def timed_calls(owner: type, name: str) -> Iterator[list[float]]:
    """The seconds of each call of the method `owner.name` while inside."""
    original, spent = getattr(owner, name), []

    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            spent.append(time.perf_counter() - started)

    setattr(owner, name, wrapper)
    try:
        yield spent
    finally:
        setattr(owner, name, original)


def load(store: Path, probes: Path) -> tuple[object, dict]:
    """The engine of the imported pipeline, and its load: seconds in all, the probe's seconds and whether the probe
    came from the cache, the RSS after it and its sampled peak during it, and the engine's own memory record."""
    from diffusion.denoiser import Denoiser
    from model_store import Store
    from worker.engine import load_engine

    with PeakRSS() as memory, timed_calls(Denoiser, "calibrate") as probe_s:
        started = time.perf_counter()
        engine = load_engine(MODEL, Store(store), device="cpu", probe_cache=probes)
        load_s = time.perf_counter() - started
    return engine, {
        "load_s": load_s,
        "probe_s": sum(probe_s),
        "probe_cached": bool(engine.denoiser.cached),
        "rss_after_load": rss(),
        "peak_rss_load": memory.peak,
        "engine_memory": None if engine.memory is None else engine.memory.to_json(),
    }


def their_pipeline(engine, folder: Path):
    """StableDiffusionPipeline on the engine's own modules, with the folder's tokenizer and DDIM scheduler."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from transformers import CLIPTokenizer

    pipe = StableDiffusionPipeline(
        unet=engine.denoiser.net.unet,
        vae=engine.model.vae,
        text_encoder=engine.model.text_encoder,
        tokenizer=CLIPTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True),
        scheduler=DDIMScheduler.from_pretrained(folder / "scheduler", local_files_only=True),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def layout(module: torch.nn.Module, channels_last: bool) -> None:
    """Put the module's 4-d weights in channels_last or contiguous memory format, in place (the same parameters)."""
    module.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


@contextlib.contextmanager
def clock() -> Iterator[dict]:
    """The wall-clock seconds (`s`) and the process's CPU seconds, every thread's (`cpu_s`), spent inside."""
    spent, wall, cpu = {}, time.perf_counter(), time.process_time()
    yield spent
    spent["s"], spent["cpu_s"] = time.perf_counter() - wall, time.process_time() - cpu


def ours(engine, batch: int, steps: int, size: tuple[int, int]) -> tuple[dict, np.ndarray]:
    """The clock's seconds and the (B, H, W, 3) uint8 images of our whole process: the prompts encoded afresh, DDIM,
    the decode."""
    layout(engine.denoiser.net, engine.denoiser.channels_last)  # as the engine loaded it
    engine.model.embeddings.clear()  # as for a prompt this worker has not seen
    engine.model.cached_bytes = 0
    with clock() as spent:
        conditions = [engine.condition(PROMPT, GUIDANCE) for _ in range(batch)]
        images = engine.generate(list(range(batch)), steps, [0.0] * batch, conditions, size=size)
    return spent, images


def theirs(pipe, batch: int, steps: int, size: tuple[int, int]) -> tuple[dict, np.ndarray]:
    """The clock's seconds and the images of one plain diffusers call (its float images quantised as its
    numpy_to_pil does)."""
    layout(pipe.unet, channels_last=False)  # diffusers' own layout
    width, height = size
    with torch.inference_mode(), clock() as spent:
        out = pipe(
            prompt=[PROMPT] * batch,
            num_inference_steps=steps,
            guidance_scale=GUIDANCE,
            height=height,
            width=width,
            generator=[torch.Generator().manual_seed(seed) for seed in range(batch)],
            output_type="np",
        )
    return spent, (out.images * 255).round().astype(np.uint8)


def level_diff(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


def paired(run: dict, pairs: list[dict], repeats: int, save: Callable[[], None], say: Callable[[str], None]) -> None:
    """Time both sides back to back until `pairs` holds `repeats` pairs; which side goes first alternates. `run` maps
    "ours" and "theirs" to a function of the steps giving (the clock's seconds, images)."""
    if len(pairs) >= repeats:
        return
    run["ours"](1)  # warm-up, both sides
    run["theirs"](1)
    while len(pairs) < repeats:
        order = ("ours", "theirs") if len(pairs) % 2 == 0 else ("theirs", "ours")
        spent, images = {}, {}
        for side in order:
            spent[side], images[side] = run[side](None)
        pairs.append(
            {
                **{f"{side}_{k}": v for side in order for k, v in spent[side].items()},
                "first": order[0],
                "first_image_level_diff": level_diff(images["ours"][0], images["theirs"][0]),
                "level_diff": level_diff(images["ours"], images["theirs"]),
                "ours_first_image_sha256": hashlib.sha256(images["ours"][0].tobytes()).hexdigest(),
            }
        )
        save()
        say(
            f"  repeat {len(pairs)}/{repeats}: "
            + ", ".join(f"{side} {spent[side]['s']:.1f} s ({spent[side]['cpu_s']:.1f} s CPU)" for side in order)
        )


def row(engine, batch: int, pairs: list[dict], threads: int) -> dict:
    """A batch's figures. Besides the wall clock's, the ratio of CPU seconds (less moved by other processes on the
    cores), and each run's CPU share: CPU seconds / (wall seconds x threads), below 1 where the process waited."""
    ours_ips = [batch / p["ours_s"] for p in pairs]
    theirs_ips = [batch / p["theirs_s"] for p in pairs]
    return {
        "batch": batch,
        "ours_images_per_s": median(ours_ips),
        "theirs_images_per_s": median(theirs_ips),
        "ratio": median([a / b for a, b in zip(ours_ips, theirs_ips, strict=True)]),
        "cpu_ratio": median([p["theirs_cpu_s"] / p["ours_cpu_s"] for p in pairs]),
        "calls": list(engine.denoiser.shapes.plan(2 * batch)),  # guidance: two rows per image
        "runs": {
            "ours": ours_ips,
            "theirs": theirs_ips,
            "first": [p["first"] for p in pairs],
            "ours_cpu_share": [p["ours_cpu_s"] / p["ours_s"] / threads for p in pairs],
            "theirs_cpu_share": [p["theirs_cpu_s"] / p["theirs_s"] / threads for p in pairs],
        },
        "level_diff": max(p["level_diff"] for p in pairs),
    }


def profile(engine, shape: Shape, batches: Sequence[int], repeats: int) -> dict:
    """Where the time goes, each the median of `repeats` after a warm-up: their UNet alone as the pipeline calls it
    (contiguous weights and inputs, 77 prompt tokens) at 1 row and at each batch's 2B rows; the engine's calls (its
    channels_last weights and inputs) at 1 and 2 rows; and a one-row VAE decode."""
    unet = engine.denoiser.net.unet
    width, height = shape.size
    factor = 2 ** (len(shape.vae["block_out_channels"]) - 1)
    rows = sorted({1, *(2 * b for b in batches)})
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(rows[-1], shape.unet["in_channels"], height // factor, width // factor, generator=gen)
    c = torch.randn(rows[-1], 77, engine.model.text_encoder.config.hidden_size, generator=gen)
    t = torch.full((rows[-1],), 500)

    def median_s(call: Callable[[], object]) -> float:
        with torch.inference_mode():
            call()
            return median(timings(call, repeats))

    def unet_s(n: int, channels_last: bool) -> float:
        layout(unet, channels_last)
        xs = x[:n].contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        return median_s(lambda: unet(xs, t[:n], encoder_hidden_states=c[:n]))

    theirs_s = {n: unet_s(n, False) for n in rows}
    ours_s = {n: unet_s(n, True) for n in (1, 2)}
    decode_s = median_s(lambda: engine.pixels(x[:1]))
    layout(engine.denoiser.net, engine.denoiser.channels_last)
    return {
        "unet_contiguous_s": {str(n): v for n, v in theirs_s.items()},
        "unet_channels_last_s": {str(n): v for n, v in ours_s.items()},
        "decode_row_s": decode_s,
        # their UNet's time a row in batch B's calls / ours a row in one-row calls: what one-row calls can reach
        "one_row_ceiling": {str(b): theirs_s[2 * b] / (2 * b) / ours_s[1] for b in batches},
    }


def parameters(engine) -> tuple[dict, dict]:
    modules = dict(zip(PARTS, (engine.denoiser.net.unet, engine.model.vae, engine.model.text_encoder), strict=True))
    counts = {name: sum(p.numel() for p in m.parameters()) for name, m in modules.items()}
    sizes = {name: sum(p.numel() * p.element_size() for p in m.parameters()) for name, m in modules.items()}
    return counts, {**sizes, "total": sum(sizes.values())}


def checkpoint(file: Path, key: dict, resume: bool, say: Callable[[str], None]) -> dict:
    """The progress of an interrupted run of the same key (with `resume`), else a fresh one."""
    if resume:
        try:
            found = json.loads(file.read_text())
        except (OSError, ValueError):
            found = None
        if found and found.get("key") == key:
            done = {b: len(p) for b, p in found["pairs"].items()}
            say(f"resuming from {file}: repeats done {done}")
            found["processes"] += 1
            return found
        say(f"nothing to resume in {file} for these settings: starting afresh")
    return {"key": key, "pairs": {}, "profile": None, "processes": 1}


def write_checkpoint(file: Path, progress: dict) -> None:
    partial = file.with_name(file.name + ".partial")
    partial.write_text(json.dumps(progress, indent=1, sort_keys=True))
    os.replace(partial, file)


def timed(
    engine,
    pipe,
    shape: Shape,
    steps: int,
    repeats: int,
    batches: Sequence[int],
    progress: dict,
    save: Callable[[], None],
    say: Callable[[str], None],
) -> None:
    """The repeats still missing from `progress` at each batch, then their UNet's profile, saved as they come."""
    for batch in batches:
        say(f"{shape.name}, batch {batch}, {steps} steps:")
        run = {
            "ours": lambda n, b=batch: ours(engine, b, n or steps, shape.size),
            "theirs": lambda n, b=batch: theirs(pipe, b, n or steps, shape.size),
        }
        paired(run, progress["pairs"].setdefault(str(batch), []), repeats, save, say)
    if progress["profile"] is None:
        say(f"{shape.name}: the UNet and the decode alone")
        progress["profile"] = profile(engine, shape, batches, repeats)
        save()


def compare(
    shape: Shape,
    cache: Path,
    steps: int,
    repeats: int,
    batches: Sequence[int],
    resume: bool,
    say: Callable[[str], None],
) -> dict:
    """One pipeline, both ways: its figures, load, memory and parity."""
    import diffusers

    folder, store = prepared(shape, cache, say)
    engine, loaded = load(store, cache.expanduser() / "probes")
    pipe = their_pipeline(engine, folder)
    key = {
        "checkpoint": CHECKPOINT,
        "identity": engine.manifest.identity,
        "engine": engine.id,
        "steps": steps,
        "threads": torch.get_num_threads(),
        "batches": list(batches),
        "cpu": cpu_model(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
    }
    file = folder.parent / f"progress-{steps}-steps-{key['threads']}-threads.json"  # one per setting
    progress = checkpoint(file, key, resume, say)
    with PeakRSS() as memory:
        timed(engine, pipe, shape, steps, repeats, batches, progress, lambda: write_checkpoint(file, progress), say)
    pairs = progress["pairs"]
    first = pairs[str(batches[0])][0]
    counts, sizes = parameters(engine)
    digests = {p["ours_first_image_sha256"] for b in batches for p in pairs[str(b)]}
    return {
        "pipeline": shape.name,
        "size": list(shape.size),
        "model": engine.manifest.ref,
        "engine": engine.id,
        "flops": engine.manifest.extras.get("flops"),
        "parameters": counts,
        "parameter_bytes": sizes,
        **loaded,
        "call_sizes": list(engine.probe.shapes.sizes),
        "rejected_sizes": list(engine.probe.rejected),
        "rows": [row(engine, b, pairs[str(b)][:repeats], torch.get_num_threads()) for b in batches],
        "parity": {
            "batch": batches[0],
            "first_image_level_diff": first["first_image_level_diff"],
            "level_diff": max(p["level_diff"] for b in batches for p in pairs[str(b)]),
            "ours_first_image_same_in_every_run": len(digests) == 1,
        },
        "peak_rss_run": memory.peak,
        "profile": progress["profile"],
        "processes": progress["processes"],
    }


def run(
    repeats: int = DEFAULTS["repeats"],
    steps: int = DEFAULTS["steps"],
    threads: int | None = DEFAULTS["threads"],
    pipeline: str | None = DEFAULTS["pipeline"],
    cache: str | Path | None = DEFAULTS["cache"],
    resume: bool = DEFAULTS["resume"],
    batches: Sequence[int] = BATCHES,
    say: Callable[[str], None] = lambda line: print(line, flush=True),
) -> dict:
    import diffusers
    import transformers

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    names = [pipeline] if pipeline else list(SHAPES)
    where = Path(cache) if cache else DEFAULT_CACHE
    with torch_threads(threads) as n_threads:
        results = {name: compare(SHAPES[name], where, steps, repeats, batches, resume, say) for name in names}
    return {
        "threads": n_threads,
        "steps": steps,
        "repeats": repeats,
        "guidance": GUIDANCE,
        "prompt": PROMPT,
        "eta": 0.0,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "goal_batch_1": GOAL_BATCH_1,
        "documented_one_row_ceiling": DOCUMENTED_CEILING,
        "pipelines": results,
    }


def size_of(n: int | None) -> str:
    if n is None:
        return "n/a"
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def engine_memory(record: dict | None) -> str:
    if record is None:
        return "none"
    return (
        f"weights {size_of(record['parameters'])}, activations {size_of(record['activations'])} "
        f"({record['rows']}-row call or the decode), max batch {record['max_batch']}"
    )


def flops_note(res: dict, r: dict) -> list[str]:
    """The import's FLOP counts (model.json's `flops`, at the default size) and the rates they give at batch 1."""
    f = r["flops"]
    if not f or not {"unet_row", "vae_decode", "text_encoder"} <= set(f):
        return []
    image = 2 * res["steps"] * f["unet_row"] + f["vae_decode"] + 2 * f["text_encoder"]  # guidance: 2 rows, 2 prompts
    one = next((x for x in r["rows"] if x["batch"] == 1), None)
    rates = ""
    if one is not None:
        ours, theirs = (image * one[f"{side}_images_per_s"] / 1e9 for side in ("ours", "theirs"))
        rates = f"; at batch 1 ours {fmt(ours)} GFLOP/s, theirs {fmt(theirs)} GFLOP/s"
    return [
        f"FLOPs (counted at import): a UNet row {fmt(f['unet_row'] / 1e9)} G, the VAE decode "
        f"{fmt(f['vae_decode'] / 1e9)} G, a prompt's encoding {fmt(f['text_encoder'] / 1e9)} G: "
        f"{fmt(image / 1e9)} GFLOP an image{rates}"
    ]


def goals(res: dict, result: dict) -> list[str]:
    """Each batch's ratio beside its goal: >= GOAL_BATCH_1 at batch 1; beyond, the ceiling of one-row calls, as
    documented for ddpm-cifar10-32 and as the profile gives it for this UNet."""
    rows = {r["batch"]: r for r in result["rows"]}
    ceilings = result["profile"]["one_row_ceiling"]
    calls = (
        "" if result["call_sizes"] == [1] else f" (though this engine's calls are not one-row: {result['call_sizes']})"
    )
    notes = []
    for batch, r in rows.items():
        here = f"the UNet's one-row ceiling here {ceilings[str(batch)]:.2f}x{calls}"
        if batch == 1:
            met = "met" if r["ratio"] >= res["goal_batch_1"] else "not met"
            notes.append(f"batch 1: {r['ratio']:.2f}x against a goal of >= {res['goal_batch_1']}x: {met}; {here}")
        else:
            notes.append(
                f"batch {batch}: {r['ratio']:.2f}x beside the ceiling of one-row calls, "
                f"{res['documented_one_row_ceiling']} on ddpm-cifar10-32 at batch 8 (docs/BENCHMARKS.md, Against "
                f"diffusers); {here}"
            )
    return notes


def format_pipeline(res: dict, r: dict) -> str:
    headers = ["batch", "ours images/s", "theirs images/s", "ours/theirs", "by CPU time", "our UNet calls (rows)"]
    rows = [
        [
            x["batch"],
            fmt(x["ours_images_per_s"]),
            fmt(x["theirs_images_per_s"]),
            f"{x['ratio']:.2f}x",
            f"{x['cpu_ratio']:.2f}x",
            x["calls"],
        ]
        for x in r["rows"]
    ]
    shares = [v for x in r["rows"] for k in ("ours_cpu_share", "theirs_cpu_share") for v in x["runs"][k]]
    b, p = r["parameter_bytes"], r["profile"]
    parity = r["parity"]
    width, height = r["size"]
    resumed = "" if r["processes"] == 1 else f", from {r['processes']} processes (resumed)"
    theirs_s = ", ".join(f"{n} rows {v:.3g} s" for n, v in p["unet_contiguous_s"].items())
    ours_s = ", ".join(f"{n} rows {v:.3g} s" for n, v in p["unet_channels_last_s"].items())
    notes = [
        f"{r['pipeline']}: random weights, fp32, {sum(r['parameters'].values()):,} parameters ("
        + ", ".join(f"{k} {v:,}" for k, v in r["parameters"].items())
        + f"), {size_of(b['total'])}",
        f"{width}x{height}, {res['steps']} steps, guidance {res['guidance']} (2 UNet rows an image), eta 0, "
        f"{res['threads']} torch threads; medians over {res['repeats']} repeats, each timing both sides back to back "
        f"(which first alternating){resumed}; by CPU time: the ratio of the process's CPU seconds, all threads; "
        f"CPU share of the timed runs (CPU s / wall s / threads) {min(shares):.2f} to {max(shares):.2f}",
        f"ours: {r['model']} (imported with `diffusetv import diffusers`), engine {r['engine']}: condition + generate, "
        "prompt embeddings encoded afresh each run, VAE decode one row per call",
        f"theirs: diffusers {res['diffusers']} StableDiffusionPipeline on the engine's own unet, vae and text_encoder "
        "objects (same weights, one copy), the UNet's weights contiguous for their runs and channels_last for ours "
        "(switched between runs, untimed), output_type='np'",
        f"load {r['load_s']:.1f} s, of which the probe {r['probe_s']:.1f} s "
        f"({'from the probe cache' if r['probe_cached'] else 'probed, then cached'}); call sizes {r['call_sizes']}, "
        f"rejected {r['rejected_sizes']}",
        f"parity at batch {parity['batch']}: first image max diff {parity['first_image_level_diff']} levels "
        f"(all images, all batches: {parity['level_diff']}); ours the same in every run: "
        f"{parity['ours_first_image_same_in_every_run']}",
        f"memory: RSS {size_of(r['rss_after_load'])} after load, peak {size_of(r['peak_rss_load'])} during load, "
        f"{size_of(r['peak_rss_run'])} while timing (sampled every 50 ms); the engine's own record: "
        + engine_memory(r["engine_memory"]),
        f"a UNet call alone: contiguous, as theirs, {theirs_s}; channels_last, as ours, {ours_s}; "
        f"a one-row VAE decode {p['decode_row_s']:.3g} s",
        *flops_note(res, r),
        *goals(res, r),
    ]
    return table(f"Stable Diffusion against diffusers: {r['pipeline']}", headers, rows, notes)


def format_result(res: dict) -> str:
    return "\n\n".join(format_pipeline(res, r) for r in res["pipelines"].values())


def main(argv: Sequence[str] | None = None) -> int:
    from bench.__main__ import main as bench_main

    return bench_main(["sd", *(argv if argv is not None else sys.argv[1:])])


if __name__ == "__main__":
    raise SystemExit(main())
