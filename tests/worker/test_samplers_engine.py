"""Samplers through the engine: jobs of any sampler on one model and step count share each network call, and a row's
bytes never depend on the rows beside it, nor on a row that leaves mid-run (diffusion.samplers)."""

from __future__ import annotations

import numpy as np
import pytest

from diffusion.ddim import last_step
from helpers import save_tiny_text
from worker.engine import PictureIn, load_engine

STEPS = 8
ROWS = [("ddim", 0.0), ("dpmpp_2m", 0.0), ("unipc", 0.0), ("ddim", 1.0), ("unipc", 0.0)]


def counting(engine) -> list[int]:
    """Wrap the engine's network caller: the rows of each call, in order."""
    calls: list[int] = []
    denoiser = engine.denoiser
    inner = denoiser.__call__

    class Counted:
        def __getattr__(self, name):
            return getattr(denoiser, name)

        def __call__(self, x, *args):
            calls.append(x.shape[0])
            return inner(x, *args)

    engine.denoiser = Counted()
    return calls


def alone(engine, i: int, conditions=None, pictures=None) -> np.ndarray:
    sampler, eta = ROWS[i]
    cond = None if conditions is None else [conditions[i]]
    pics = None if pictures is None else [pictures[i]]
    run = engine.run([100 + i], STEPS, [eta], conditions=cond, starts=pics, samplers=[sampler])
    return engine.images(last_step(run), pics)[0]


@pytest.fixture
def engine(tiny_store):
    return load_engine("tiny", tiny_store, device="cpu")


def test_rows_of_three_samplers_share_one_call_per_step_and_keep_their_bytes(engine):
    expected = [alone(engine, i) for i in range(len(ROWS))]
    calls = counting(engine)
    seeds = [100 + i for i in range(len(ROWS))]
    run = engine.run(seeds, STEPS, [eta for _, eta in ROWS], samplers=[s for s, _ in ROWS])
    images = engine.images(last_step(run))
    assert calls == [len(ROWS)] * STEPS  # one network call per step, every row in it
    for i, image in enumerate(images):
        assert np.array_equal(image, expected[i]), ROWS[i]
    assert not np.array_equal(expected[1], expected[0]) and not np.array_equal(expected[2], expected[1])


def test_a_row_that_leaves_mid_run_changes_no_other_rows_bytes(engine):
    expected = [alone(engine, i) for i in range(len(ROWS))]
    seeds = [100 + i for i in range(len(ROWS))]
    run = engine.run(seeds, STEPS, [eta for _, eta in ROWS], samplers=[s for s, _ in ROWS])
    for step in run:
        if step.step == 3:
            run.drop([1, 2])  # a dpmpp_2m row and a unipc row canceled, their histories gone with them
    images = engine.images(step)
    for image, i in zip(images, (0, 3, 4), strict=True):
        assert np.array_equal(image, expected[i]), ROWS[i]


def test_image_to_image_rows_of_multistep_samplers_enter_late_with_an_empty_history(engine):
    rng = np.random.default_rng(0)
    picture = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    pictures = [PictureIn(picture, 0.5), None, PictureIn(picture, 0.7), None, PictureIn(picture, 0.3)]
    expected = [alone(engine, i, pictures=pictures) for i in range(len(ROWS))]
    calls = counting(engine)
    seeds = [100 + i for i in range(len(ROWS))]
    run = engine.run(seeds, STEPS, [e for _, e in ROWS], starts=pictures, samplers=[s for s, _ in ROWS])
    images = engine.images(last_step(run), pictures)
    assert len(calls) == STEPS and calls[0] == 2 and calls[-1] == len(ROWS)  # rows enter at their start steps
    for i, image in enumerate(images):
        assert np.array_equal(image, expected[i]), ROWS[i]


def test_guided_rows_of_every_sampler_keep_their_bytes(tiny_store):
    save_tiny_text(tiny_store)
    engine = load_engine("words", tiny_store, device="cpu")
    conditions = [engine.condition(p, g) for p, g in (("red heart", 3.0), (None, None), ("cat", 2.0),
                                                          ("dog", 1.0), ("red heart", 3.0))]  # fmt: skip
    expected = [alone(engine, i, conditions) for i in range(len(ROWS))]
    seeds = [100 + i for i in range(len(ROWS))]
    run = engine.run(seeds, STEPS, [e for _, e in ROWS], conditions=conditions, samplers=[s for s, _ in ROWS])
    for image, want in zip(engine.images(last_step(run)), expected, strict=True):
        assert np.array_equal(image, want)


def test_a_multistep_inversion_redraws_its_picture_with_its_sampler(engine):
    picture = engine.generate([7], STEPS, [0.0], samplers=["dpmpp_2m"])[0]
    *_, inverse = engine.invert([picture], STEPS, sampler="dpmpp_2m")
    again = engine.images(last_step(engine.reconstruct(list(inverse.x), STEPS, sampler="dpmpp_2m")))[0]
    other = engine.images(last_step(engine.reconstruct(list(inverse.x), STEPS)))[0]
    error = np.abs(again.astype(int) - picture.astype(int)).mean()
    assert error < np.abs(other.astype(int) - picture.astype(int)).mean()
    with pytest.raises(Exception, match="does not invert"):
        next(iter(engine.invert([picture], STEPS, sampler="unipc")))
