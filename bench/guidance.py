"""The cost of classifier-free guidance: the same text model with and without a prompt, in one run.

    python -m bench guidance [--repeats N] [--steps N] [--threads N] [--store DIR --model NAME] [--quick]

A prompted job at guidance s (not 0 or 1) needs two rows of every network call, the unconditional and the
conditional one (diffusion.guidance); a prompt-free job needs one. Each repeat times the prompt-free batch and
the prompted batch back to back (which goes first alternates), so the machine's noise hits both alike; the
figure is the median over repeats of prompted seconds / prompt-free seconds, per batch size. The model is
`--store`/`--model` (the bundled emoji32-text with `--store model_store/models`), else a random-weights text
U-Net of the same shape in a temporary store.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from bench.flops import torch_threads
from bench.report import fmt, median, table

BATCHES = (1, 16)
DEFAULTS = {"repeats": 5, "steps": 20, "store": None, "model": None}
QUICK = {"repeats": 2, "steps": 2, "batches": (1, 4)}
PROMPTS = ("red heart", "cat face", "grinning face with smiling eyes", "green apple", "dog face", "sun")
GUIDANCE = 3.0
BUDGET = 2.1  # DESIGN: two rows per job cost at most 2.1x the prompt-free job at batch 16


def random_text_store(root: Path):
    """A store holding `benchtext@1`: a random-weights text U-Net of the published model's shape."""
    from diffusion.unet import UNet, UNetConfig
    from model_store import Store
    from model_store.text import TEXT_FIELD, TextSpec
    from model_store.vocabulary import Vocabulary
    from model_store.weights import TEXT_KIND, save_model

    vocabulary = Vocabulary.build(list(PROMPTS), 10)
    torch.manual_seed(0)
    net = UNet(UNetConfig(32, text_vocab=vocabulary.size, text_tokens=10, text_dims=64)).eval()
    with torch.no_grad():
        net.head.weight.normal_(0, 0.1)
        for name, p in net.named_parameters():
            if ".film." in name:
                p.normal_(0, 0.05)
    store = Store(root)
    text = TextSpec(vocabulary, PROMPTS, GUIDANCE)
    training = {"note": "random weights, for benchmarks only"}
    save_model(
        store,
        "benchtext",
        net,
        "offset_cosine",
        [0.5] * 3,
        [0.25] * 3,
        training,
        TEXT_KIND,
        {TEXT_FIELD: text.to_json()},
    )
    return store


def run(
    repeats: int = DEFAULTS["repeats"],
    steps: int = DEFAULTS["steps"],
    threads: int | None = None,
    batches: Sequence[int] = BATCHES,
    store: str | None = None,
    model: str | None = None,
) -> dict:
    from model_store import Store
    from worker.engine import load_engine

    with torch_threads(threads), tempfile.TemporaryDirectory(prefix="diffusetv-bench-") as tmp:
        source = Store(Path(store)) if store else random_text_store(Path(tmp) / "models")
        engine = load_engine(model or ("emoji32-text" if store else "benchtext"), source, device="cpu")
        rows = []
        for batch in batches:
            seeds, etas = list(range(batch)), [0.0] * batch
            free = [engine.condition(None, None)] * batch
            prompted = [engine.condition(PROMPTS[i % len(PROMPTS)], GUIDANCE) for i in range(batch)]
            engine.generate(seeds, 1, etas, prompted)  # warm-up
            ratios, free_s, prompted_s = [], [], []
            for r in range(repeats):
                pair = {}
                for name, conditions in (("free", free), ("prompted", prompted))[:: 1 if r % 2 == 0 else -1]:
                    started = time.perf_counter()
                    engine.generate(seeds, steps, etas, conditions)
                    pair[name] = time.perf_counter() - started
                ratios.append(pair["prompted"] / pair["free"])
                free_s.append(pair["free"])
                prompted_s.append(pair["prompted"])
            rows.append(
                {
                    "batch": batch,
                    "prompt_free_img_steps_per_s": batch * steps / median(free_s),
                    "prompted_img_steps_per_s": batch * steps / median(prompted_s),
                    "cost_ratio": median(ratios),
                    "ratios": ratios,
                }
            )
        return {
            "model": engine.manifest.ref,
            "steps": steps,
            "repeats": repeats,
            "guidance": GUIDANCE,
            "call_sizes": list(engine.probe.shapes.sizes),
            "rows": rows,
        }


def format_result(result: dict) -> str:
    rows = [
        [
            r["batch"],
            fmt(r["prompt_free_img_steps_per_s"]),
            fmt(r["prompted_img_steps_per_s"]),
            f"{r['cost_ratio']:.2f}x",
        ]
        for r in result["rows"]
    ]
    notes = [
        f"{result['model']}, {result['steps']} steps, guidance {result['guidance']}, median of {result['repeats']} "
        f"paired repeats; network call sizes {result['call_sizes']}",
        f"cost = prompted seconds / prompt-free seconds (budget at batch 16: {BUDGET}x)",
    ]
    headers = ["batch", "prompt-free img-steps/s", "prompted img-steps/s", "cost"]
    return table("Classifier-free guidance", headers, rows, notes)
