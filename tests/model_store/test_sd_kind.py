"""Kind `diffusers-sd`'s estimate of a job's model work (model_store.sd_kind), torch-free."""

import pytest

from model_store import ModelStoreError, kinds, sd_kind
from model_store.kinds import Work
from model_store.manifest import Manifest

FLOPS = {"unet_row": 1001, "vae_decode": 8, "text_encoder": 3}


def sd(flops: dict | None = FLOPS, sizes=((512, 512), (768, 512), (512, 768))) -> Manifest:
    extras = {"sizes": [list(s) for s in sizes], **({"flops": flops} if flops is not None else {})}
    return Manifest("sd", 1, {}, "scaled_linear", [0.5] * 3, [0.5] * 3, "0" * 64, kind=sd_kind.KIND, extras=extras)


def test_a_jobs_flops_at_the_default_size_are_its_rows_decodes_and_prompts():
    # steps x rows x unet_row + images x vae_decode + prompts x text_encoder
    assert sd_kind.job_flops(sd(), 50, 2, 1, 512, 512, 1) == 50 * 2 * 1001 + 8 + 3
    assert sd_kind.job_flops(sd(), 7, 16, 8, 512, 512, 3) == 7 * 16 * 1001 + 8 * 8 + 3 * 3


def test_another_size_scales_the_unet_and_the_vae_by_its_pixels_rounded_up_once():
    # 768x512 is 3/2 of the default's pixels: (3 x 1001 + 8) x 3/2 = 4516.5, rounded up; the prompts do not scale
    assert sd_kind.job_flops(sd(), 3, 1, 1, 768, 512, 2) == 4517 + 2 * 3
    assert sd_kind.job_flops(sd(), 4, 1, 1, 768, 512, 0) == (4 * 1001 + 8) * 3 // 2  # a whole number: exact
    tall = sd(sizes=((512, 768), (512, 512)))  # the default is the first size: 512x512 is 2/3 of it
    assert sd_kind.job_flops(tall, 3, 1, 1, 512, 512, 0) == 2008  # (3003 + 8) x 2/3 = 2007.33...


def test_the_kinds_hook_counts_two_rows_a_sample_only_when_guided():
    flops = kinds.get(sd_kind.KIND).flops
    assert flops is not None
    assert flops(sd(), Work(1, 50, 7.5, 1)) == 50 * 2 * 1001 + 8 + 3  # the default size when none is given
    assert flops(sd(), Work(1, 50, 1.0, 1, 512, 512)) == 50 * 1001 + 8 + 3  # s <= 1: the conditional row alone
    assert flops(sd(), Work(1, 50, None, 1, 512, 512)) == 50 * 1001 + 8 + 3
    walk = Work(8, 20, 7.5, 3, 512, 768)  # 8 frames, a prompt, a negative prompt and prompt_b
    assert flops(sd(), walk) == -(-(20 * 16 * 1001 + 8 * 8) * 3 // 2) + 3 * 3


def test_no_estimate_without_recorded_flops_and_none_for_other_kinds():
    assert sd_kind.flops(sd(flops=None), Work(1, 50, 7.5, 1, 512, 512)) is None
    assert all(kinds.get(name).flops is None for name in ("ddim-unet", "ddim-unet-text", "diffusers-unet2d"))


@pytest.mark.parametrize("flops", [{"unet_row": 1}, {**FLOPS, "vae_decode": "many"}, {**FLOPS, "text_encoder": -1}, 7])
def test_malformed_flops_are_one_line_naming_the_manifest(flops):
    with pytest.raises(ModelStoreError, match="flops") as info:
        sd_kind.job_flops(sd(flops=flops), 1, 1, 1, 512, 512, 1)
    assert "\n" not in str(info.value) and "model.json" in str(info.value)
