"""What a request may ask of any model, in one place: the schemas (app.schemas), the CLI (diffusetv) and the
registry (model_store.kinds, model_store.text) all read these. A kind or a model may bound steps further
(model_store.kinds.Kind.steps_bound)."""

MAX_SEED = 2**53 - 1  # the largest integer a JavaScript number holds exactly
MIN_STEPS, MAX_STEPS = 1, 1000  # DDIM steps
MIN_ETA, MAX_ETA = 0.0, 1.0  # 0: deterministic DDIM; 1: DDPM-like (it scales sigma)
MIN_GUIDANCE, MAX_GUIDANCE = 0.0, 20.0  # classifier-free guidance scale s
MIN_FRAMES, MAX_FRAMES = 2, 32  # an interpolation's points, both ends included
MIN_STRENGTH, MAX_STRENGTH = 0.0, 1.0  # image-to-image: the share of the steps that run
DEFAULT_STRENGTH = 0.8  # as diffusers' image-to-image pipelines
MAX_HARMONIZE = 10  # inpainting: RePaint's back-and-forth jumps per step
# Fixed-point iterations of each inverse DDIM step (diffusion.inversion): 1 + INVERSION_REFINE network calls per
# step, the same for every row (a row's latent never depends on its batch). On the 140 held-out emoji32 glyphs at
# 50 steps the reconstruction's median PSNR is 22.6 dB naive and 37.5 dB with 2 (`python -m bench inversion`,
# docs/MODEL.md).
INVERSION_REFINE = 2
