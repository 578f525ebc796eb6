"""The prompt-conditioned kind `ddim-unet-text` in the engine: rows stay independent, guidance 0 is prompt-free."""

import numpy as np
import pytest
import torch

from helpers import generate_spec, save_tiny_text
from worker.engine import load_engine

LONG = "grinning cat with smiling eyes face with tears of joy and a red heart beside a green apple"


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    from model_store import Store

    store = Store(tmp_path_factory.mktemp("models"))
    save_tiny_text(store)
    return load_engine("words", store, device="cpu")


def x0(engine, seeds, steps, etas, conditions):
    from diffusion.ddim import last_step

    return last_step(engine.run(seeds, steps, etas, conditions=conditions)).x0_pred


def test_a_prompted_row_has_the_same_bits_beside_long_short_and_empty_prompts(engine):
    mine = engine.condition("red heart", 2.5)
    alone = x0(engine, [7], 8, [0.0], [mine])
    neighbours = [engine.condition(LONG, 4.0), engine.condition("dog", 1.0), engine.condition(None, None),
                  engine.condition("green apple", 0.0), engine.condition("cat face", 12.0)]  # fmt: skip
    for k in range(len(neighbours) + 1):
        conditions = [*neighbours[:k], mine, *neighbours[k:]]
        seeds = [100 + i for i in range(k)] + [7] + [200 + i for i in range(len(neighbours) - k)]
        etas = [0.5] * k + [0.0] + [1.0] * (len(neighbours) - k)
        batch = x0(engine, seeds, 8, etas, conditions)
        assert torch.equal(batch[k], alone[0]), k  # tensors, bit for bit


def test_the_prompt_and_the_guidance_change_the_image(engine):
    images = [
        engine.generate([3], 10, [0.0], [c])[0]
        for c in (engine.condition(None, None), engine.condition("red heart", 2.5), engine.condition("cat face", 2.5),
                  engine.condition("red heart", 6.0))
    ]  # fmt: skip
    for i in range(len(images)):
        for j in range(i):
            assert not np.array_equal(images[i], images[j]), (i, j)


def test_guidance_0_with_a_prompt_gives_the_pixels_of_the_prompt_free_job(engine):
    free = engine.generate([11], 10, [0.3], [engine.condition(None, None)])
    zero = engine.generate([11], 10, [0.3], [engine.condition("red heart", 0.0)])
    assert np.array_equal(free, zero)
    prompted = generate_spec(engine.manifest, 11, 10, 0.3, prompt="red heart", guidance=0.0)
    assert engine.parameters(prompted) != engine.parameters(generate_spec(engine.manifest, 11, 10, 0.3))


def test_guidance_1_is_the_conditional_row_alone_and_a_prompt_free_job_the_unconditional_one(engine):
    from diffusion.ddim import last_step
    from diffusion.guidance import Condition

    c = engine.condition("cat face", 1.0)
    cases = [([c], 1), ([Condition(c.embedding, 3.0)], 2), ([engine.condition(None, None)], 1), ([c, c, c], 3)]
    for conditions, rows in cases:
        run = engine.run(list(range(len(conditions))), 3, [0.0] * len(conditions), conditions=conditions)
        calls, network = [], run.eps_model

        def counting(x, t, cond, network=network, calls=calls):
            calls.append(x.shape[0])
            return network(x, t, cond)

        run.eps_model = counting
        last_step(run)
        assert calls == [rows] * 3, (conditions, calls)  # one call a step, with exactly the rows needed


def test_prompts_with_the_same_known_words_share_an_embedding_and_unknown_words_are_left_out(engine):
    assert torch.equal(engine.model.embed("red heart"), engine.model.embed("red zebra heart"))
    assert not torch.equal(engine.model.embed("red heart"), engine.model.embed("heart red"))  # positions count


def test_the_probe_ran_the_conditioned_network(engine):
    conditions = engine.model.probe_conditions(16)
    assert conditions.shape == (16, 8)
    assert not torch.equal(conditions[0], conditions[1])  # the empty prompt beside a word
    assert torch.equal(conditions[0], engine.model.embed(""))
