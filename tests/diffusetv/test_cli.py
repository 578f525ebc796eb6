"""`diffusetv` as a user runs it: separate processes, real files."""

import json

import numpy as np
import pytest

from app.core.png import decode_png, read_parameters
from diffusion.grid import tile
from helpers import run_cli


def sample(tmp_path, name, *args):
    out = tmp_path / name
    run_cli("sample", "--model", "tiny", "--steps", "10", "--out", str(out), *args)
    return out.read_bytes()


def test_sample_is_deterministic_across_processes(tiny_store, tmp_path):
    a = sample(tmp_path, "a.png", "--seed", "42")
    b = sample(tmp_path, "b.png", "--seed", "42")
    assert a == b
    other = sample(tmp_path, "c.png", "--seed", "43")
    assert not np.array_equal(decode_png(other), decode_png(a))
    manifest = tiny_store.resolve("tiny")
    assert read_parameters(a) == {
        "seed": 42,
        "steps": 10,
        "eta": 0.0,
        "model": "tiny",
        "version": 1,
        "digest": manifest.digest,
        "identity": manifest.identity,
        "device": "cpu",
        "precision": "fp32",
    }
    assert b'tEXtparameters\x00{"device":"cpu","digest":' in a  # compact JSON, sorted keys


def test_eta_above_zero_is_still_deterministic(tiny_store, tmp_path):
    a = sample(tmp_path, "a.png", "--seed", "7", "--eta", "0.8")
    b = sample(tmp_path, "b.png", "--seed", "7", "--eta", "0.8")
    c = sample(tmp_path, "c.png", "--seed", "7")
    assert a == b
    assert not np.array_equal(decode_png(a), decode_png(c))


def test_grid_tiles_equal_the_images_sampled_alone(tiny_store, tmp_path):
    grid_png = sample(tmp_path, "grid.png", "--seed", "100", "--n", "8", "--eta", "0.5")
    grid = decode_png(grid_png)
    assert grid.shape == (3 * 16, 3 * 16, 3)  # ceil(sqrt(8)) = 3 columns, 3 rows, no padding
    assert read_parameters(grid_png)["n"] == 8
    for i in (0, 3, 7):
        alone = decode_png(sample(tmp_path, f"alone{i}.png", "--seed", str(100 + i), "--eta", "0.5"))
        assert np.array_equal(tile(grid, i, (16, 16), 3), alone), f"tile {i} differs from seed {100 + i} alone"
    assert (tile(grid, 8, (16, 16), 3) == 255).all()  # the empty cell


def test_user_errors_are_one_line_without_traceback(tiny_store, tmp_path):
    cases = {
        ("--model", "../x"): "bad model reference",
        ("--model", "missing"): "not found",
        ("--steps", "0"): "--steps",
        ("--eta", "1.5"): "--eta",
        ("--seed", str(2**53)): "--seed",
    }
    for args, message in cases.items():
        base = {"--model": "tiny", "--seed": "1", "--steps": "5"}
        base.update(dict(zip(args[::2], args[1::2], strict=True)))
        flat = [x for kv in base.items() for x in kv]
        proc = run_cli("sample", *flat, "--out", str(tmp_path / "x.png"), check=False)
        assert proc.returncode == 2, args
        assert message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / "x.png").exists()


def test_a_control_character_in_a_prompt_is_a_one_line_error(tiny_store, tmp_path):
    from helpers import save_tiny_text

    save_tiny_text(tiny_store)
    out = tmp_path / "x.png"
    args = ("sample", "--model", "words", "--seed", "1", "--steps", "2", "--out", str(out))
    proc = run_cli(*args, "--prompt", "red \x1b[31mheart", check=False)
    assert proc.returncode == 2, proc.stderr
    message = "diffusetv sample: error: --prompt: a prompt may not hold control characters; this one has U+001B"
    assert proc.stderr.splitlines() == [message], proc.stderr
    assert not out.exists()
    run_cli(*args, "--prompt", "red \u200bheart\u202e")  # invisible marks are dropped, not refused
    assert read_parameters(out.read_bytes())["prompt"] == "red heart"


def test_models_lists_and_verifies(tiny_store):
    listing = run_cli("models").stdout
    assert "tiny@1" in listing and "(default)" in listing
    verified = run_cli("models", "verify").stdout
    assert "ok  tiny@1" in verified and "1 model(s) verified" in verified


@pytest.mark.slow
def test_train_then_publish_then_sample(tmp_path, monkeypatch):
    store = tmp_path / "store"
    monkeypatch.setenv("DIFFUSETV_MODEL_STORE", str(store))
    images = np.full((20, 16, 16, 3), 255, dtype=np.uint8)
    images[:, 4:12, 4:12] = [200, 40, 40]
    np.savez(tmp_path / "d.npz", train=images)
    run = tmp_path / "run"
    args = [
        "train",
        "--data",
        str(tmp_path / "d.npz"),
        "--image-size",
        "16",
        "--batch-size",
        "8",
        "--widths",
        "8,16",
        "--block-depth",
        "1",
        "--sample-every",
        "0",
        "--out",
        str(run),
    ]
    run_cli(*args, "--steps", "5")
    assert "--resume" in run_cli(*args, "--steps", "10", check=False).stderr
    run_cli(*args, "--steps", "10", "--resume")
    out = run_cli("publish", str(run), "--name", "squares").stdout
    assert "published squares@1" in out
    manifest = json.loads((store / "squares" / "1" / "model.json").read_text())
    assert manifest["training"]["steps"] == 10 and manifest["config"]["widths"] == [8, 16]
    assert (manifest["training"]["learning_rate"], manifest["training"]["lr_decay"]) == (1e-3, "constant")
    assert manifest["training"]["p2"] == {"gamma": 0.0, "k": 1.0}
    assert manifest["normalization"]["mean"][0] > manifest["normalization"]["mean"][1]
    run_cli("publish", str(run), "--name", "squares")
    assert (store / "squares" / "2" / "ema.safetensors").is_file()
    run_cli("sample", "--model", "squares@2", "--seed", "1", "--steps", "3", "--out", str(tmp_path / "s.png"))
    assert decode_png((tmp_path / "s.png").read_bytes()).shape == (16, 16, 3)
    annealed = [*args[:-1], str(tmp_path / "annealed"), "--steps", "4", "--lr", "5e-4", "--lr-decay", "cosine"]
    annealed += ["--p2-gamma", "1"]
    run_cli(*annealed)
    run_cli("publish", str(tmp_path / "annealed"), "--name", "squares")
    training = json.loads((store / "squares" / "3" / "model.json").read_text())["training"]
    assert (training["learning_rate"], training["lr_decay"]) == (5e-4, "cosine")
    assert training["p2"] == {"gamma": 1.0, "k": 1.0}


def test_a_settings_error_names_the_variable():
    proc = run_cli("api", env={"DIFFUSETV_API_KEYS": "short"}, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "diffusetv api: error: invalid settings: DIFFUSETV_API_KEYS: every API key must be at least 16 characters"
    )
    proc = run_cli("api", env={"DIFFUSETV_PORT": "0"}, check=False)
    assert proc.returncode == 2 and "DIFFUSETV_PORT: Input should be greater than or equal to 1" in proc.stderr


def test_a_missing_or_empty_store_is_an_error_that_names_it(tmp_path):
    alone = {"DIFFUSETV_BUNDLED_MODELS": "0"}  # the user store only
    for args in (("models",), ("models", "verify")):
        proc = run_cli(*args, env={**alone, "DIFFUSETV_MODEL_STORE": str(tmp_path / "nonexistent")}, check=False)
        assert proc.returncode == 2 and f"no folder at {tmp_path / 'nonexistent'}" in proc.stderr
        assert "verified" not in proc.stdout
    proc = run_cli("models", "verify", env={**alone, "DIFFUSETV_MODEL_STORE": str(tmp_path)}, check=False)
    assert proc.returncode == 2 and f"no models at {tmp_path}" in proc.stderr


def test_an_unknown_default_model_is_a_warning_in_models(tiny_store):
    proc = run_cli("models", env={"DIFFUSETV_MODEL": "cats"})
    assert "tiny@1" in proc.stdout and "(default)" not in proc.stdout
    assert f"warning: the default model DIFFUSETV_MODEL=cats is not in {tiny_store.root}" in proc.stderr


def test_picture_options_that_do_not_go_together_are_one_line_errors(tiny_store, tmp_path):
    picture = tmp_path / "in.png"
    run_cli("sample", "--model", "tiny", "--seed", "1", "--steps", "2", "--out", str(picture))
    cases = [
        (["--seed", "1", "--mask", str(picture)], "--mask needs --image"),
        (["--seed", "1", "--strength", "0.5"], "--strength needs --image"),
        (["--seed", "1", "--image", str(picture), "--harmonize", "2"], "--harmonize needs --mask"),
        (["--seed", "1", "--image", str(picture), "--strength", "2"], "--strength must be in 0..1"),
        (["--latent", str(picture), "--image", str(picture)], "--latent starts from an inversion's noise"),
        (["--steps", "5"], "--seed is required (unless --latent is given)"),
        (["--seed", "1", "--image", str(tmp_path / "nope.png")], "--image: cannot read"),
        (["--seed", "1", "--latent", str(picture)], "is not an inversion's latent"),
    ]
    for args, message in cases:
        proc = run_cli("sample", "--model", "tiny", *args, "--out", str(tmp_path / "x.png"), check=False)
        assert proc.returncode == 2, (args, proc.stderr)
        assert message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / "x.png").exists()


def test_invert_then_sample_from_the_latent_redraws_the_reconstruction(tiny_store, tmp_path):
    picture, latent, again = tmp_path / "in.png", tmp_path / "in.safetensors", tmp_path / "again.png"
    run_cli("sample", "--model", "tiny", "--seed", "3", "--steps", "6", "--out", str(picture))
    run_cli("invert", str(picture), "--model", "tiny", "--steps", "6", "--out", str(latent),
            "--reconstruction", str(tmp_path / "back.png"))  # fmt: skip
    run_cli("sample", "--model", "tiny", "--steps", "6", "--latent", str(latent), "--out", str(again))
    assert np.array_equal(decode_png(again.read_bytes()), decode_png((tmp_path / "back.png").read_bytes()))
    args = ["--model", "tiny", "--steps", "5", "--latent", str(latent), "--out", str(again)]
    proc = run_cli("sample", *args, check=False)
    assert proc.returncode == 2 and "inverted with steps 6, not 5" in proc.stderr


def test_sampler_options_that_do_not_go_together_are_one_line_errors(tiny_store, tmp_path):
    picture = tmp_path / "in.png"
    run_cli("sample", "--model", "tiny", "--seed", "1", "--steps", "2", "--out", str(picture))
    out = ["--out", str(tmp_path / "x.png")]
    cases = [
        (["sample", "--seed", "1", "--sampler", "dpmpp_2m", "--eta", "0.5", *out],
         "error: --eta: eta is DDIM's alone: sampler 'dpmpp_2m' takes eta 0"),
        (["sample", "--seed", "1", "--sampler", "unipc", "--image", str(picture), "--mask", str(picture),
          "--harmonize", "2", *out], "error: --harmonize: harmonize is DDIM's alone: sampler 'unipc' keeps"),
        (["sample", "--seed", "1", "--sampler", "euler", *out], "--sampler: invalid choice: 'euler'"),
        (["invert", str(picture), "--sampler", "unipc", *out],
         "error: --sampler: 'unipc' does not invert: use one of ddim, dpmpp_2m"),
    ]  # fmt: skip
    for args, message in cases:
        proc = run_cli(*args[:1], "--model", "tiny", *args[1:], check=False)
        assert proc.returncode == 2, (args, proc.stderr)
        assert message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / "x.png").exists()


def test_a_sampler_the_model_cannot_run_is_refused_by_the_kinds_reason(tiny_store, monkeypatch):
    import argparse
    import dataclasses

    from diffusetv.commands import service_engine
    from diffusetv.errors import UserError
    from model_store import kinds

    refusal = lambda manifest, sampler: None if sampler == "ddim" else f"{manifest.ref} runs DDIM only"  # noqa: E731
    monkeypatch.setitem(
        kinds.KINDS, "ddim-unet", dataclasses.replace(kinds.KINDS["ddim-unet"], sampler_refusal=refusal)
    )
    args = argparse.Namespace(model="tiny", steps=4, sampler="unipc", device="cpu", precision="fp32", compile=False)
    with pytest.raises(UserError, match=r"^--sampler unipc: tiny@1 runs DDIM only$"):
        service_engine(args)
    assert service_engine(argparse.Namespace(**{**vars(args), "sampler": "ddim"})).manifest.ref == "tiny@1"


def test_sampler_ddim_is_the_default_byte_for_byte(tiny_store, tmp_path):
    plain = sample(tmp_path, "plain.png", "--seed", "42")
    named = sample(tmp_path, "named.png", "--seed", "42", "--sampler", "ddim")
    assert named == plain and "sampler" not in read_parameters(named)


def test_a_multistep_sample_is_deterministic_named_in_its_png_and_the_same_in_a_grid(tiny_store, tmp_path):
    ddim = decode_png(sample(tmp_path, "ddim.png", "--seed", "5"))
    for sampler in ("dpmpp_2m", "unipc"):
        a = sample(tmp_path, f"{sampler}-a.png", "--seed", "5", "--sampler", sampler)
        assert sample(tmp_path, f"{sampler}-b.png", "--seed", "5", "--sampler", sampler) == a
        assert read_parameters(a)["sampler"] == sampler and read_parameters(a)["eta"] == 0.0
        assert not np.array_equal(decode_png(a), ddim)
        grid = decode_png(sample(tmp_path, f"{sampler}-grid.png", "--seed", "4", "--n", "4", "--sampler", sampler))
        assert np.array_equal(tile(grid, 1, (16, 16), 2), decode_png(a)), sampler  # seed 5 is the grid's second


def test_invert_with_dpmpp_2m_names_it_and_redraws_its_reconstruction(tiny_store, tmp_path):
    picture, latent, back = tmp_path / "in.png", tmp_path / "in.safetensors", tmp_path / "back.png"
    run_cli("sample", "--model", "tiny", "--seed", "3", "--steps", "6", "--out", str(picture))
    run_cli("invert", str(picture), "--model", "tiny", "--steps", "6", "--sampler", "dpmpp_2m", "--out", str(latent),
            "--reconstruction", str(back))  # fmt: skip
    assert read_parameters(back.read_bytes())["sampler"] == "dpmpp_2m"
    again = tmp_path / "again.png"
    run_cli("sample", "--model", "tiny", "--steps", "6", "--latent", str(latent), "--sampler", "dpmpp_2m",
            "--out", str(again))  # fmt: skip
    assert np.array_equal(decode_png(again.read_bytes()), decode_png(back.read_bytes()))
