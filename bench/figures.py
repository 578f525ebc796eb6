"""The figures in README.md and docs/MODEL.md, remade from a training run and the published model.

    python -m bench.figures --run runs/emoji32 --model emoji32 --out docs/img

Writes loss.png (the training curve), training.png (EMA samples at several points in training),
samples.png (64 samples: seeds 0..63, 50 steps, eta 0), televisions.png (the row of televisions:
static, then the x0 prediction at every 5th step of 50, for a few seeds) and pictures.png (pictures in: held-out
glyphs, their reconstructions from a refined inversion, image-to-image at three strengths and an inpainted half;
`--only pictures` remakes it alone) and samplers.png (the same seeds by each sampler at several steps; `--only
samplers`).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from app.core.events import preview_steps
from diffusion.grid import make_grid
from model_store import Store
from worker.engine import load_engine

SCALE = 4


def loss_plot(run: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with (run / "loss.csv").open() as f:
        rows = [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(f)]
    steps, losses = np.array([r[0] for r in rows]), np.array([r[1] for r in rows])
    window = 100
    smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=120)
    ax.plot(steps, losses, color="#c8d6f0", linewidth=0.6, label="loss per step")
    ax.plot(steps[window - 1 :], smooth, color="#0b57d0", linewidth=1.6, label=f"mean of {window} steps")
    ax.set_xlabel("optimiser step (batch 64)")
    ax.set_ylabel("MAE of the predicted noise")
    ax.set_ylim(0, max(0.3, float(np.percentile(losses, 99.5))))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def labelled(image: Image.Image, text: str) -> Image.Image:
    canvas = Image.new("RGB", (image.width, image.height + 18), "white")
    canvas.paste(image, (0, 18))
    ImageDraw.Draw(canvas).text((4, 3), text, fill="black")
    return canvas


def training_montage(run: Path, out: Path, picks: int = 5) -> None:
    files = sorted((run / "samples").glob("step_*.png"))
    chosen = [files[round(i * (len(files) - 1) / (picks - 1))] for i in range(picks)] if len(files) > picks else files
    tiles = []
    for f in chosen:
        img = Image.open(f).convert("RGB")
        img = img.resize((img.width * 2, img.height * 2), Image.Resampling.NEAREST)
        tiles.append(labelled(img, f"step {int(f.stem.split('_')[1])}"))
    montage = Image.new("RGB", (sum(t.width for t in tiles) + 8 * (len(tiles) - 1), tiles[0].height), "white")
    x = 0
    for t in tiles:
        montage.paste(t, (x, 0))
        x += t.width + 8
    montage.save(out)


def upscale(pixels: np.ndarray, factor: int = SCALE) -> Image.Image:
    img = Image.fromarray(pixels)
    return img.resize((img.width * factor, img.height * factor), Image.Resampling.NEAREST)


def televisions(engine, seeds: list[int], steps: int, out: Path) -> None:
    """Rows of static, then every preview step's x0, for each seed."""
    rng = np.random.default_rng(0)
    size = engine.shape[1]
    rows = []
    shown = sorted(preview_steps(steps))
    for seed in seeds:
        frames = [rng.integers(0, 256, (size, size, 1), dtype=np.uint8).repeat(3, axis=2)]
        for step in engine.run([seed], steps, [0.0]):
            if step.step in shown:
                frames.append(engine.pixels(step.x0_pred)[0])
        rows.append(frames)
    pad = 4
    tile = size * SCALE
    strip = Image.new("RGB", (len(rows[0]) * (tile + pad) + pad, len(rows) * (tile + pad) + pad), (43, 43, 43))
    for r, frames in enumerate(rows):
        for c, frame in enumerate(frames):
            strip.paste(upscale(frame), (pad + c * (tile + pad), pad + r * (tile + pad)))
    strip.save(out)


PICTURE_COLUMNS = ("glyph", "inverted", "0.3", "0.6", "1.0", "mask", "inpainted", "harmonize 4")
STRENGTHS = (0.3, 0.6, 1.0)


def pictures_figure(engine, glyphs: np.ndarray, steps: int, out: Path, seed: int = 0) -> None:
    """One row per held-out glyph: the glyph, its reconstruction (refined inversion, then DDIM at eta 0), image-to-image
    from it at strengths 0.3, 0.6 and 1.0 (seed `seed`), the mask (white: repaint the left half) and the inpainted
    glyph (plain, and with harmonize 4), each as a job with those inputs gives it; row r uses seed `seed` + r."""
    from diffusion.ddim import last_step
    from worker.engine import PictureIn

    n, size = len(glyphs), glyphs.shape[1]
    *_, inverse = engine.invert(list(glyphs), steps)
    columns = [glyphs, engine.images(last_step(engine.reconstruct(list(inverse.x), steps)))]
    seeds = [seed + r for r in range(n)]
    for strength in STRENGTHS:
        rows = [PictureIn(g, strength) for g in glyphs]
        columns.append(engine.images(last_step(engine.run(seeds, steps, [0.0] * n, starts=rows)), rows))
    mask = np.zeros((size, size, 1), np.uint8)
    mask[:, : size // 2] = 255
    shown = np.where(mask > 0, 150, 30).astype(np.uint8)  # grey: repaint; dark: keep
    columns.append(np.repeat(np.broadcast_to(shown, (n, size, size, 1)), 3, axis=3))
    for harmonize in (0, 4):
        rows = [PictureIn(g, 1.0, mask, harmonize) for g in glyphs]
        columns.append(engine.images(last_step(engine.run(seeds, steps, [0.0] * n, starts=rows)), rows))
    pad, tile, head = 4, size * SCALE, 18
    figure = Image.new("RGB", (len(columns) * (tile + pad) + pad, head + n * (tile + pad) + pad), "white")
    draw = ImageDraw.Draw(figure)
    for c, (name, images) in enumerate(zip(PICTURE_COLUMNS, columns, strict=True)):
        draw.text((pad + c * (tile + pad) + 2, 3), name, fill="black")
        for r in range(n):
            figure.paste(upscale(np.ascontiguousarray(images[r])), (pad + c * (tile + pad), head + r * (tile + pad)))
    figure.save(out)


SAMPLER_STEPS = (("ddim", (5, 10, 20, 50)), ("dpmpp_2m", (5, 10, 20)), ("unipc", (5, 10, 20)))


def samplers_figure(engine, seeds: list[int], out: Path) -> None:
    """One column per sampler and step count, one row per seed (eta 0): each tile is the job's image."""
    columns = [
        (f"{name} {steps}", engine.generate(seeds, steps, [0.0] * len(seeds), samplers=[name] * len(seeds)))
        for name, each in SAMPLER_STEPS
        for steps in each
    ]
    pad, tile, head = 4, engine.shape[1] * SCALE, 18
    figure = Image.new("RGB", (len(columns) * (tile + pad) + pad, head + len(seeds) * (tile + pad) + pad), "white")
    draw = ImageDraw.Draw(figure)
    for c, (name, images) in enumerate(columns):
        draw.text((pad + c * (tile + pad) + 2, 3), name, fill="black")
        for r in range(len(seeds)):
            figure.paste(upscale(np.ascontiguousarray(images[r])), (pad + c * (tile + pad), head + r * (tile + pad)))
    figure.save(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=Path("runs/emoji32"))
    parser.add_argument("--model", default="emoji32")
    parser.add_argument("--out", type=Path, default=Path("docs/img"))
    parser.add_argument(
        "--only", choices=["all", "pictures", "samplers"], default="all", help="pictures.png or samplers.png alone"
    )
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.only == "pictures":
        make_pictures(args.model, args.out / "pictures.png")
        return
    if args.only == "samplers":
        make_samplers(args.model, args.out / "samplers.png")
        return
    if (args.run / "loss.csv").exists():
        loss_plot(args.run, args.out / "loss.png")
        training_montage(args.run, args.out / "training.png")
    engine = load_engine(args.model, Store(), device="cpu")
    grid = make_grid(engine.generate(list(range(64)), 50, [0.0] * 64), cols=8)
    upscale(grid, 2).save(args.out / "samples.png")
    televisions(engine, [3, 14, 15], 50, args.out / "televisions.png")
    make_pictures(args.model, args.out / "pictures.png")
    make_samplers(args.model, args.out / "samplers.png")
    print(f"wrote figures to {args.out}")


def make_pictures(model: str, out: Path, picks: tuple[int, ...] = (0, 35, 70, 105)) -> None:
    """pictures.png from a few of the held-out glyphs (diffusion.emoji, rendered from the Noto Color Emoji font)."""
    from diffusion import emoji

    engine = load_engine(model, Store(), device="cpu")
    heldout = emoji.build(emoji.DEFAULT_FONT, engine.shape[1])["heldout"]
    pictures_figure(engine, heldout[list(picks)], 50, out)
    print(f"wrote {out}")


def make_samplers(model: str, out: Path, seeds: tuple[int, ...] = (3, 14, 15, 42)) -> None:
    """samplers.png: the same seeds by each sampler at several steps."""
    samplers_figure(load_engine(model, Store(), device="cpu"), list(seeds), out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
