import csv
import itertools
import json

import numpy as np
import pytest
import torch

import diffusion.train as training
from diffusion.train import RunError, TrainConfig, diffusion_loss, learning_rate, p2_weight, train
from diffusion.unet import UNet, UNetConfig


@pytest.fixture
def blobs(tmp_path):
    """A small synthetic data set: coloured discs on white, 16x16."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:16, :16]
    images = np.full((48, 16, 16, 3), 255, dtype=np.uint8)
    for img in images:
        cy, cx, r = rng.integers(5, 11), rng.integers(5, 11), rng.integers(3, 6)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = rng.integers(0, 200, 3)
    path = tmp_path / "blobs.npz"
    np.savez(path, train=images)
    return path


def tiny_cfg(data, steps, **kw):
    kw = {"checkpoint_every": 10, "sample_every": 0, **kw}
    return TrainConfig(data=str(data), steps=steps, image_size=16, batch_size=16, widths=(8, 16), block_depth=1, **kw)


def losses(run_dir):
    with (run_dir / "loss.csv").open() as f:
        return [float(r["loss"]) for r in csv.DictReader(f)]


@pytest.mark.slow
def test_training_lowers_the_loss_and_writes_its_run(tmp_path, blobs):
    run = tmp_path / "run"
    train(tiny_cfg(blobs, 120, sample_every=60), run, progress=False)
    curve = losses(run)
    assert len(curve) == 120
    assert np.mean(curve[-20:]) < 0.8 * np.mean(curve[:20])
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["step_0000060.png", "step_0000120.png"]
    payload = torch.load(run / "checkpoint.pt", weights_only=True)
    assert payload["step"] == 120 and set(payload) >= {"model", "ema", "optimizer", "rng", "torch_rng"}


def test_resume_is_bit_identical_to_a_straight_run(tmp_path, blobs):
    straight, split = tmp_path / "straight", tmp_path / "split"
    train(tiny_cfg(blobs, 30), straight, progress=False)
    train(tiny_cfg(blobs, 15), split, progress=False)
    with pytest.raises(RunError, match="--resume"):
        train(tiny_cfg(blobs, 30), split, progress=False)
    train(tiny_cfg(blobs, 30), split, resume=True, progress=False)
    a = torch.load(straight / "checkpoint.pt", weights_only=True)
    b = torch.load(split / "checkpoint.pt", weights_only=True)
    for key in ("model", "ema"):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name} differs after resume"
    assert losses(straight) == losses(split)


def test_resume_refuses_a_changed_recipe(tmp_path, blobs):
    run = tmp_path / "run"
    train(tiny_cfg(blobs, 2), run, progress=False)
    with pytest.raises(RunError, match="learning_rate"):
        train(tiny_cfg(blobs, 4, learning_rate=5e-4), run, resume=True, progress=False)
    with pytest.raises(RunError, match="p2_gamma"):
        train(tiny_cfg(blobs, 4, p2_gamma=1.0), run, resume=True, progress=False)
    recorded = json.loads((run / "run.json").read_text())
    for option in ("lr_decay", "p2_gamma", "p2_k"):  # a run recorded before these options existed
        del recorded["config"][option]
    (run / "run.json").write_text(json.dumps(recorded))
    assert train(tiny_cfg(blobs, 4), run, resume=True, progress=False).step == 4


def test_the_cosine_learning_rate_anneals_from_its_base_to_zero():
    steps = 1000
    rates = [learning_rate(1e-3, "cosine", t, steps) for t in range(steps + 1)]
    assert rates[0] == 1e-3 and rates[steps] == pytest.approx(0.0, abs=1e-18)
    assert rates[steps // 2] == pytest.approx(5e-4, rel=1e-12)  # (1 + cos(pi / 2)) / 2
    assert rates[steps // 4] == pytest.approx(1e-3 * (1 + 2**-0.5) / 2, rel=1e-12)
    assert all(a > b for a, b in itertools.pairwise(rates))
    assert {learning_rate(1e-3, "constant", t, steps) for t in (0, 500, 999)} == {1e-3}
    with pytest.raises(RunError, match="cosine"):
        learning_rate(1e-3, "linear", 0, steps)


def test_p2_weights_the_noisy_steps_by_one_over_k_plus_snr():
    signal, noise = torch.tensor([0.0, 0.6, 0.8, 0.95]), torch.tensor([1.0, 0.8, 0.6, 0.3122])
    snr = (signal / noise) ** 2
    assert torch.allclose(p2_weight(signal, noise, 1.0, 1.0), 1 / (1 + snr))
    assert p2_weight(signal, noise, 1.0, 1.0)[0] == 1.0  # pure noise: full weight
    assert torch.allclose(p2_weight(signal, noise, 0.5, 1.0), (1 + snr) ** -0.5)
    assert torch.equal(p2_weight(signal, noise, 0.0, 1.0), torch.ones(4))
    weights = p2_weight(signal, noise, 1.0, 1.0)
    assert all(a > b for a, b in itertools.pairwise(weights.tolist()))  # less noise, less weight


def test_a_run_refuses_a_p2_weighting_that_is_not_finite_or_favours_clean_steps(tmp_path, blobs):
    for bad in ({"p2_k": 0.0, "p2_gamma": 1.0}, {"p2_gamma": -1.0}):
        with pytest.raises(RunError, match="P2 needs gamma >= 0 and k > 0"):
            train(tiny_cfg(blobs, 2, **bad), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_the_p2_loss_is_the_weighted_mean_of_each_samples_mae_and_gamma_0_is_the_keras_loss():
    torch.manual_seed(0)
    model = UNet(UNetConfig(16, widths=(8, 16), block_depth=1))
    images = torch.randn(6, 3, 16, 16)

    def loss(p2):
        return diffusion_loss(model, images, "offset_cosine", torch.Generator().manual_seed(3), p2=p2)

    plain, weighted = loss((0.0, 1.0)), loss((1.0, 1.0))
    rng = torch.Generator().manual_seed(3)  # the same draws, by hand
    noises = torch.randn(images.shape, generator=rng)
    t = torch.rand((6, 1, 1, 1), generator=rng, dtype=torch.float64)
    signal, noise = (r.to(torch.float32) for r in training.get_schedule("offset_cosine")(t))
    with torch.no_grad():
        error = (model(signal * images + noise * noises, noise**2) - noises).abs()
    assert torch.equal(plain.detach(), torch.nn.functional.l1_loss(error, torch.zeros_like(error)))
    expected = (p2_weight(signal, noise, 1.0, 1.0).flatten() * error.mean(dim=(1, 2, 3))).mean()
    assert torch.allclose(weighted.detach(), expected, rtol=1e-6)
    assert weighted < plain  # every weight is below 1 where the signal is not zero


@pytest.mark.slow
def test_an_interrupted_cosine_run_resumes_bit_for_bit_and_keeps_its_step_count(tmp_path, blobs, monkeypatch):
    straight, split = tmp_path / "straight", tmp_path / "split"
    train(tiny_cfg(blobs, 30, lr_decay="cosine"), straight, progress=False)
    real_update = training.ema_update
    calls = []

    def interrupted(*args):  # the process dies during step 16; the last checkpoint is step 10's
        calls.append(1)
        if len(calls) == 16:
            raise KeyboardInterrupt
        real_update(*args)

    monkeypatch.setattr(training, "ema_update", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_cfg(blobs, 30, lr_decay="cosine"), split, progress=False)
    monkeypatch.setattr(training, "ema_update", real_update)
    assert torch.load(split / "checkpoint.pt", weights_only=True)["step"] == 10
    with pytest.raises(RunError, match="steps under the cosine"):
        train(tiny_cfg(blobs, 40, lr_decay="cosine"), split, resume=True, progress=False)
    train(tiny_cfg(blobs, 30, lr_decay="cosine"), split, resume=True, progress=False)
    a = torch.load(straight / "checkpoint.pt", weights_only=True)
    b = torch.load(split / "checkpoint.pt", weights_only=True)
    for key in ("model", "ema"):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name} differs after resume"
    assert losses(straight) == losses(split)
    last = learning_rate(1e-3, "cosine", 29, 30)  # the rate of the final step, not the base
    assert [g["lr"] for g in b["optimizer"]["param_groups"]] == [last]
    constant = tmp_path / "constant"
    train(tiny_cfg(blobs, 30), constant, progress=False)
    assert losses(constant)[:1] == losses(straight)[:1] and losses(constant)[1:] != losses(straight)[1:]


@pytest.fixture
def captioned_blobs(blobs, tmp_path):
    """The discs with captions, stored as `diffusetv data emoji` stores them (a unicode `train_captions`)."""
    with np.load(blobs) as archive:
        images = archive["train"]
    captions = np.array(["red disc", "green disc", "blue disc"])[np.arange(len(images)) % 3]
    path = tmp_path / "captioned.npz"
    np.savez(path, train=images, train_captions=captions.astype(np.str_))
    return path


def test_a_prompt_conditioned_run_records_its_vocabulary_and_resumes_bit_for_bit(tmp_path, captioned_blobs):
    from diffusetv.commands import caption_prompts

    prompts, vocabulary = caption_prompts(str(captioned_blobs), 4)
    assert prompts.shape == (48, 4) and vocabulary["words"] == ["blue", "disc", "green", "red"]
    cfg = {"text_tokens": 4, "text_dims": 8, "prompt_dropout": 0.2}
    straight, split = tmp_path / "straight", tmp_path / "split"
    train(tiny_cfg(captioned_blobs, 20, **cfg), straight, progress=False, prompts=prompts, vocabulary=vocabulary)
    train(tiny_cfg(captioned_blobs, 10, **cfg), split, progress=False, prompts=prompts, vocabulary=vocabulary)
    other = {**vocabulary, "words": [*vocabulary["words"], "yellow"]}
    with pytest.raises(RunError, match="vocabulary"):
        train(
            tiny_cfg(captioned_blobs, 20, **cfg), split, resume=True, progress=False, prompts=prompts, vocabulary=other
        )
    train(
        tiny_cfg(captioned_blobs, 20, **cfg), split, resume=True, progress=False, prompts=prompts, vocabulary=vocabulary
    )
    a = torch.load(straight / "checkpoint.pt", weights_only=True)["ema"]
    b = torch.load(split / "checkpoint.pt", weights_only=True)["ema"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    film = [k for k in a if k.endswith("film.proj.weight")]
    assert film and all(a[k].abs().sum() > 0 for k in film), "the prompt never reached the residual blocks"
    run = json.loads((straight / "run.json").read_text())
    assert run["vocabulary"] == vocabulary and run["unet"]["text_vocab"] == 6


def test_a_run_with_prompts_needs_all_three_parts(tmp_path, captioned_blobs):
    with pytest.raises(RunError, match="all three"):
        train(tiny_cfg(captioned_blobs, 2, text_tokens=4), tmp_path / "run", progress=False)


def test_a_warm_start_begins_as_the_source_model_and_refuses_weights_that_do_not_fit(tmp_path, captioned_blobs):
    from diffusetv.commands import caption_prompts
    from diffusion.unet import UNet, UNetConfig

    prompts, vocabulary = caption_prompts(str(captioned_blobs), 4)
    torch.manual_seed(3)
    source = UNet(UNetConfig(16, widths=(8, 16), block_depth=1)).eval()
    with torch.no_grad():
        source.head.weight.normal_(0, 0.3)
    init = {"state": source.state_dict(), "mean": [0.5, 0.5, 0.5], "std": [0.3, 0.3, 0.3]}
    cfg = tiny_cfg(captioned_blobs, 0, text_tokens=4, text_dims=8, init="source@1 sha256:x")
    state = train(cfg, tmp_path / "warm", progress=False, prompts=prompts, vocabulary=vocabulary, init=init)
    x, v = torch.randn(3, 3, 16, 16), torch.full((3, 1, 1, 1), 0.4)
    ids = torch.tensor(prompts[:3])
    with torch.no_grad():
        state.model.eval()
        assert torch.equal(state.model(x, v, ids), source(x, v))  # FiLM starts at zero: any prompt, the same
    run = json.loads((tmp_path / "warm" / "run.json").read_text())
    assert run["normalization"] == {"mean": init["mean"], "std": init["std"]} and run["config"]["init"]
    wrong = UNet(UNetConfig(16, widths=(8, 32), block_depth=1)).state_dict()
    with pytest.raises(RunError, match="do not fit"):
        train(
            cfg, tmp_path / "bad", progress=False, prompts=prompts, vocabulary=vocabulary, init={**init, "state": wrong}
        )
    with pytest.raises(RunError, match="warm start"):
        train(cfg, tmp_path / "half", progress=False, prompts=prompts, vocabulary=vocabulary)
