"""What the prompt costs the U-Net: FiLM (as built) against cross-attention (as it would be), in one run.

    python -m bench.conditioning [--repeats N] [--threads N] [--figure PNG]

FiLM's figures are measured on the emoji32-text network (random weights, the same shape): its extra
parameters, its FLOPs per image-step (counted), and the time of a batch-16 forward against the
unconditioned U-Net's, paired repeats, median. Cross-attention's are computed for the classic placement
(Rombach et al. 2022): one attention layer after each residual block at the 8x8 and 4x4 levels, its
queries from the block's width w, keys and values from the 10 prompt tokens of 64 dims (projections
2w² + 2·64·w parameters; per image 2·HW·2w² + 2·T·2·64·w + 2·2·HW·T·w FLOPs).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import torch

from bench.flops import count_flops, torch_threads
from bench.report import median
from diffusion.unet import UNet, UNetConfig

TOKENS, DIMS, VOCAB = 10, 64, 1297  # emoji32-text's prompt encoding


def parameters(module: torch.nn.Module, prefix: str = "") -> int:
    return sum(p.numel() for name, p in module.named_parameters() if name.startswith(prefix) or prefix in name)


def cross_attention_cost(config: UNetConfig, tokens: int = TOKENS, dims: int = DIMS) -> tuple[int, int]:
    """(parameters, FLOPs per image) of one cross-attention layer after every residual block at 8x8 and 4x4."""
    params = flops = 0
    side, levels = config.image_size, []
    for width in config.widths[:-1]:  # down levels, then the middle at the last width
        levels.append((side, width, config.block_depth))
        side //= 2
    levels.append((side, config.widths[-1], config.block_depth))
    levels += [(s, w, d) for s, w, d in reversed(levels[:-1])]  # the up levels mirror the down ones
    for side, width, blocks in levels:
        if side > 8:
            continue
        hw = side * side
        params += blocks * (2 * width * width + 2 * dims * width)
        flops += blocks * (2 * hw * 2 * width * width + 2 * tokens * 2 * dims * width + 2 * 2 * hw * tokens * width)
    return params, flops


def run(repeats: int = 7, threads: int | None = None, batch: int = 16) -> dict:
    torch.manual_seed(0)
    plain = UNet(UNetConfig(32)).eval()
    text = UNet(UNetConfig(32, text_vocab=VOCAB, text_tokens=TOKENS, text_dims=DIMS)).eval()
    x = torch.randn(batch, 3, 32, 32)
    v = torch.full((batch, 1, 1, 1), 0.5)
    c = torch.randn(batch, DIMS)
    one = (x[:1], v[:1], c[:1])
    base_flops = count_flops(lambda: plain(*one[:2]))
    film_flops = count_flops(lambda: text.denoise(*one)) - base_flops
    ratios = []
    with torch_threads(threads), torch.inference_mode():
        plain(x, v), text.denoise(x, v, c)  # warm-up
        for r in range(repeats):
            pair = {}
            calls = (("plain", lambda: plain(x, v)), ("film", lambda: text.denoise(x, v, c)))
            for name, call in calls[:: 1 - 2 * (r % 2)]:  # which goes first alternates
                started = time.perf_counter()
                for _ in range(5):
                    call()
                pair[name] = time.perf_counter() - started
            ratios.append(pair["film"] / pair["plain"])
    base_params = parameters(plain)
    attention_params, attention_flops = cross_attention_cost(plain.config)
    return {
        "unet_parameters": base_params,
        "unet_flops": base_flops,
        "film_parameters": sum(p.numel() for n, p in text.named_parameters() if ".film." in n),
        "text_encoder_parameters": sum(p.numel() for n, p in text.named_parameters() if n.startswith("text.")),
        "film_flops": film_flops,
        "film_time_ratio": median(ratios),
        "cross_attention_parameters": attention_params,
        "cross_attention_flops": attention_flops,
        "batch": batch,
        "repeats": repeats,
    }


def format_result(r: dict) -> str:
    pct = lambda part, whole: f"{100 * part / whole:.1f}%"  # noqa: E731
    return "\n".join(
        [
            f"U-Net: {r['unet_parameters']:,} parameters, {r['unet_flops'] / 1e6:.1f} MFLOPs per image-step",
            f"FiLM (built): +{r['film_parameters']:,} parameters ({pct(r['film_parameters'], r['unet_parameters'])}), "
            f"+{r['film_flops'] / 1e6:.3f} MFLOPs ({pct(r['film_flops'], r['unet_flops'])}); "
            f"batch-{r['batch']} forward {r['film_time_ratio']:.3f}x the unconditioned one (median of {r['repeats']})",
            f"text encoder (shared): {r['text_encoder_parameters']:,} parameters, run once per prompt",
            f"cross-attention (8x8, 4x4; computed): +{r['cross_attention_parameters']:,} parameters "
            f"({pct(r['cross_attention_parameters'], r['unet_parameters'])}), "
            f"+{r['cross_attention_flops'] / 1e6:.2f} MFLOPs ({pct(r['cross_attention_flops'], r['unet_flops'])})",
        ]
    )


def figure(r: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 3))
    names = ["FiLM\n(built)", "cross-attention\n(8x8, 4x4)"]
    for ax, key, title in (
        (axes[0], "parameters", "extra parameters, % of the U-Net"),
        (axes[1], "flops", "extra FLOPs per image-step, % of the U-Net"),
    ):
        whole = r[f"unet_{key}"]
        values = [100 * r[f"film_{key}"] / whole, 100 * r[f"cross_attention_{key}"] / whole]
        bars = ax.bar(names, values, color=["#0b57d0", "#9aa0a6"])
        ax.bar_label(bars, fmt="%.1f%%")
        ax.set_title(title, fontsize=10)
        ax.set_ylim(0, max(values) * 1.25)
    fig.suptitle("Conditioning the emoji32 U-Net on a prompt (python -m bench.conditioning)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.conditioning", description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--figure", default=None, metavar="PNG", help="also draw the figure of docs/MODEL.md")
    args = parser.parse_args(argv)
    result = run(args.repeats, args.threads)
    print(format_result(result))
    if args.figure:
        figure(result, args.figure)
        print(f"wrote {args.figure}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
