"""Smoke tests of the benchmark suite: it runs and its JSON has the expected shape. Speeds are never asserted."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from bench.models import supported_precisions
from helpers import REPO, require, run_cli


def test_the_default_unet_costs_a_plausible_number_of_flops_per_image_step():
    from bench.flops import unet_flops

    flops = unet_flops()
    print(f"default U-Net, 32x32: {flops / 1e9:.3f} GFLOP per image-step")
    assert 0.3e9 < flops < 3e9


def test_the_matmul_rate_is_positive():
    from bench.flops import matmul_gflops

    assert matmul_gflops(threads=1, n=256, runs=3, warmup=1) > 0


def test_percentiles_and_tables():
    from bench.report import percentile, table

    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([1.0, 2.0], 95) == pytest.approx(1.95)
    text = table("T", ["a", "bb"], [["x", 1], ["yy", 22]], ["note"])
    assert text.splitlines()[0] == "T" and text.endswith("  note") and "yy  22" in text


def test_fresh_seeds_never_repeat():
    from bench.service import Seeds

    seeds = Seeds()
    drawn = [seeds() for _ in range(1000)]
    assert len(set(drawn)) == 1000 and all(0 <= s < 2**53 for s in drawn)


def test_the_bench_command_is_wired_and_checks_its_options():
    assert "engine" in run_cli("bench", "--help").stdout
    bad = run_cli("bench", "engine", "--repeats", "0", check=False)
    assert bad.returncode == 2 and "--repeats must be >= 1" in bad.stderr


@pytest.mark.slow
def test_engine_bench_quick_writes_its_json(tmp_path, capsys):
    from bench.__main__ import main

    out = tmp_path / "engine.json"
    assert main(["engine", "--quick", "--steps", "1", "--repeats", "1", "--threads", "1", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Engine efficiency" in printed and "machine:" in printed
    data = json.loads(out.read_text())
    assert {"cpu", "cores", "torch", "torch_threads"} <= set(data["machine"])
    res = data["results"]["engine"]
    assert res["flops_per_image_step"] > 0 and res["matmul_gflops"] > 0 and res["threads"] == 1
    offered = supported_precisions(("fp32", "bf16"))  # bf16 only where this CPU has native kernels
    assert res["left_out"] == [p for p in ("fp32", "bf16") if p not in offered]
    cells = {(r["path"], r["precision"], r["batch"]) for r in res["rows"]}
    assert cells == {(p, q, b) for p in ("engine", "raw") for q in offered for b in (1, 4)}
    for row in res["rows"]:
        assert row["image_steps_per_s"] > 0 and row["gflops"] > 0 and row["efficiency"] > 0 and row["vs_baseline"] > 0
    assert set(res["summary"]) == {f"{p} {q}" for p in ("engine", "raw") for q in offered}
    assert res["summary"]["engine fp32"]["batch"] == 1


def test_diffusers_bench_runs_the_same_network_both_ways():
    require(importlib.util.find_spec("diffusers") is not None, "diffusers is not installed (diffusetv[worker])")
    from bench import diffusers_cmp

    res = diffusers_cmp.run(repeats=2, steps=1, threads=1, batches=(1, 2), architecture="tiny")
    assert res["parameters"] > 0 and res["flops_per_image_step"] > 0 and res["load_s"] > 0
    assert [r["batch"] for r in res["rows"]] == [1, 2] and res["kept_sizes"]
    for row in res["rows"]:
        assert row["ours_images_per_s"] > 0 and row["theirs_images_per_s"] > 0
        runs = row["runs"]
        assert len(runs["ours"]) == len(runs["theirs"]) == 2
        paired = [ours / theirs for ours, theirs in zip(runs["ours"], runs["theirs"], strict=True)]
        assert row["ratio"] == pytest.approx(sum(paired) / 2)  # ratios pair the runs of one repeat
    assert 0.5 < res["profile"]["network_share"] <= 1 and res["profile"]["one_row_ceiling"] > 0
    assert "ours/theirs" in diffusers_cmp.format_result(res)


def test_the_bench_network_is_the_ddpm_cifar10_32_architecture():
    require(importlib.util.find_spec("diffusers") is not None, "diffusers is not installed (diffusetv[worker])")
    from bench import diffusers_cmp

    unet = diffusers_cmp.their_unet(diffusers_cmp.CIFAR10_32)
    assert round(sum(p.numel() for p in unet.parameters()) / 1e6, 1) == 35.7


@pytest.mark.slow
def test_service_bench_against_a_real_stack():
    from bench import service
    from diffusetv.errors import UserError
    from diffusetv.launch import redis_server_binary

    try:
        redis_server_binary(prefer_path=True)
    except UserError as exc:
        require(False, str(exc))

    res = service.run(repeats=1, steps=2, threads=1, clients=2, requests=2, matmul_runs=1)
    t = res["throughput"]
    assert t["sequential"]["images_per_s"] > 0 and t["concurrent"]["images_per_s"] > 0 and t["ratio"] > 0
    assert t["concurrent"]["p95_s"] >= t["concurrent"]["p50_s"] > 0
    assert res["overhead"]["service_s"] > 0 and res["overhead"]["in_process_s"] > 0
    assert res["cache"]["fresh_s"] > 0 and res["cache"]["repeat_s"] > 0
    assert res["concurrent_gflops"] > 0 and res["concurrent_efficiency"] > 0
    assert "Through the API" in service.format_result(res)


def test_diffusetv_bench_passes_every_argument_on_to_python_m_bench():
    """`diffusetv bench` has no options of its own: its help, its errors and its exit codes are `python -m bench`'s."""
    for args in (["--help"], ["engine", "--repeats", "0"], ["no-such-suite"], ["--quick", "--steps", "1001"]):
        ours = run_cli("bench", *args, check=False)
        theirs = subprocess.run(
            [sys.executable, "-m", "bench", *args], capture_output=True, text=True, cwd=REPO, timeout=300
        )
        assert (ours.returncode, ours.stdout, ours.stderr) == (theirs.returncode, theirs.stdout, theirs.stderr), args
    assert "--repeats" in run_cli("bench", "--help").stdout


def test_precision_bench_compares_the_same_seeds():
    from bench import precision
    from worker.engine import bf16_supported

    if not bf16_supported("cpu"):
        res = precision.run(steps=2, seeds=3, batch=2)
        assert "bf16: not offered, the cpu here has no native bf16 kernels" in precision.format_result(res)
        pytest.skip("this CPU has no native bf16 kernels: bf16 is not offered here")
    res = precision.run(steps=2, seeds=3, batch=2)
    assert res["seeds"] == 3 and res["engines"]["fp32"].startswith("cpu/fp32/")
    assert precision.psnr(*[__import__("numpy").zeros((2, 2, 3), "uint8")] * 2) == float("inf")
    assert 10 < res["psnr_min"] <= res["psnr_median"] < 80  # bf16 is close to fp32, not equal
    assert "bf16 against fp32" in precision.format_result(res)


def test_gpu_bench_checks_determinism_and_sweeps_batches_on_any_device():
    from bench import gpu

    res = gpu.run(repeats=1, steps=2, size=16, batches=(1, 3), device="cpu", precisions=("fp32",))
    (det,) = res["determinism"]
    assert det["identical"] and det["pixels_identical"] and det["max_abs_diff"] == 0.0
    (thr,) = res["throughput"]
    assert [r["batch"] for r in thr["rows"]] == [1, 3] and thr["best_images_per_s"] > 0
    assert "Images/s on cpu" in gpu.format_result(res)


def test_invariance_prints_the_probe_of_each_kernel_family(capsys):
    from bench import invariance

    assert invariance.ranges([1, 2, 3, 5, 7, 8]) == "1-3, 5, 7-8" and invariance.ranges([]) == "none"
    assert invariance.main(["--reference", "3", "--threads", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("  ")[0].strip() for line in lines[2:]] == list(invariance.FAMILIES)


@pytest.mark.slow
def test_paired_bench_compares_against_a_git_revision():
    from bench import paired

    ratios = paired.run("HEAD", pairs=1, batches=[1], steps=1, threads=1)
    assert list(ratios) == [1] and len(ratios[1]) == 1 and ratios[1][0] > 0


def test_guidance_bench_times_the_same_text_model_with_and_without_a_prompt(capsys):
    from bench.__main__ import main

    assert main(["guidance", "--quick", "--steps", "1", "--repeats", "2", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "Classifier-free guidance" in out and "benchtext@1" in out
    from bench import guidance

    result = guidance.run(repeats=2, steps=1, threads=1, batches=(2,))
    (row,) = result["rows"]
    assert row["batch"] == 2 and len(row["ratios"]) == 2 and all(r > 0 for r in row["ratios"])
    assert row["cost_ratio"] == sorted(row["ratios"])[0] + (sorted(row["ratios"])[1] - sorted(row["ratios"])[0]) / 2


def test_the_pictures_bench_times_each_strength_against_plain(tiny_store):
    from bench import pictures

    result = pictures.run(steps=4, repeats=2, rows=2, model="tiny@1", threads=1)
    assert list(result["ratio"]) == ["plain", "strength 0.3", "strength 0.6", "strength 1.0"]
    assert result["ratio"]["plain"] == 1.0 and all(s > 0 for s in result["seconds"].values())
    text = pictures.format_result(result)
    assert "strength 0.6" in text and "tiny@1, a batch of 2 rows, 4 steps" in text


def test_inversion_bench_reports_naive_and_refined_for_each_model(capsys):
    from helpers import require_prerequisite

    require_prerequisite("emoji-font")
    from bench.__main__ import main
    from worker.engine import REFINE

    assert main(["inversion", "--quick", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "Inversion: 8 held-out emoji32 glyphs, 5 steps" in out and "emoji32-text, caption" in out
    from bench import inversion

    result = inversion.run(steps=2, glyphs=2, models=("emoji32",), threads=1)
    assert [(r["method"], r["calls"]) for r in result["rows"]] == [
        ("naive", 2),
        (f"refined ({REFINE})", 2 * (1 + REFINE)),
        ("dpmpp_2m (naive)", 2),
    ]
    assert all(r["median_db"] > 5 for r in result["rows"]) and result["cpu"]


def test_equal_quality_reads_the_intervals_edges_toward_better():
    from bench.quality import equal_quality, not_worse, wilson

    base = {"metric": "kid", "low": 3.5, "high": 3.7}
    assert not_worse({"metric": "kid", "low": 3.7, "high": 4.0}, base)
    assert not not_worse({"metric": "kid", "low": 3.71, "high": 4.0}, base)
    assert not_worse({"metric": "top5", "low": 0.1, "high": 0.5}, {"metric": "top5", "low": 0.5, "high": 0.7})
    assert not not_worse({"metric": "top5", "low": 0.1, "high": 0.49}, {"metric": "top5", "low": 0.5, "high": 0.7})
    rows = [
        {"model": "m", "sampler": "ddim", "steps": 50, "metric": "kid", "low": 3.5, "high": 3.7},
        {"model": "m", "sampler": "ddim", "steps": 10, "metric": "kid", "low": 5.0, "high": 5.2},
        {"model": "m", "sampler": "unipc", "steps": 5, "metric": "kid", "low": 4.0, "high": 4.2},
        {"model": "m", "sampler": "unipc", "steps": 10, "metric": "kid", "low": 3.6, "high": 3.8},
        {"model": "m", "sampler": "unipc", "steps": 20, "metric": "kid", "low": 3.4, "high": 3.6},
    ]
    assert equal_quality(rows) == {"m": {"ddim": 50, "unipc": 10}}
    low, high = wilson(150, 300)
    assert low < 0.5 < high and high - low == pytest.approx(2 * 1.959964 * (0.25 / 300) ** 0.5, rel=0.01)


def test_the_quality_and_samplers_benches_run_each_sampler(tmp_path, monkeypatch, capsys):
    from helpers import require_prerequisite

    require_prerequisite("emoji-font")
    from bench import quality, samplers

    monkeypatch.setattr(quality, "CACHE", tmp_path)
    result = quality.run(n=4, models=("emoji32",), grid=(("ddim", (2, 50)), ("unipc", (2,))), threads=1)
    assert [(r["sampler"], r["steps"], r["metric"]) for r in result["rows"]] == [
        ("ddim", 2, "kid"), ("ddim", 50, "kid"), ("unipc", 2, "kid"),
    ]  # fmt: skip
    assert all(r["low"] <= r["value"] <= r["high"] for r in result["rows"])
    again = quality.run(n=4, models=("emoji32",), grid=(("ddim", (2, 50)), ("unipc", (2,))), threads=1)
    assert again["rows"] == result["rows"]  # read back from the checkpoint, not sampled again
    path = tmp_path / "quality.json"
    assert set(result["equal_quality"]["emoji32@1"]) == {"ddim", "unipc"}
    result["equal_quality"]["emoji32@1"]["unipc"] = 2  # as if unipc at 2 steps were not worse than DDIM-50
    path.write_text(json.dumps({"results": {"quality": result}}))
    timed = samplers.run(repeats=1, rows=2, quality=path, threads=1)
    first = timed["results"][0]
    assert (first["sampler"], first["steps"], first["speedup"]) == ("ddim", 50, 1.0)
    assert {r["sampler"] for r in timed["results"]} == {"ddim", "unipc"}
    assert "vs DDIM-50" in samplers.format_result(timed)
