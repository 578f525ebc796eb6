"""Kind `ddim-unet-text`: the `ddim-unet` U-Net with a text encoder, its residual blocks modulated by the prompt.

The network is called as net(x, noise variance, c), with c the (B, text_dims) prompt embedding of each
row. Each prompt is encoded alone (one row, `text_tokens` ids: START, its known words, PAD), so its
embedding never depends on other prompts; the engine guides each sample with its own scale from the
rows of one call (diffusion.guidance). A negative prompt's embedding takes the empty prompt's place in
the unconditional row: still two rows per sample.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from diffusion.guidance import Condition
from diffusion.unet import UNet
from model_store.text import TextSpec
from model_store.weights import load_model
from worker.kinds.ddim_unet import DDIMUNet

EMBEDDINGS_KEPT = 4096  # prompt embeddings cached per engine (each is text_dims floats)
PROBE_SEED = 20261201


class Conditioned(nn.Module):
    """net(x, noise_variance, c): the U-Net proper, given the prompt embeddings."""

    def __init__(self, unet: UNet) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, x: torch.Tensor, noise_variance: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.unet.denoise(x, noise_variance, c)


class DDIMUNetText(DDIMUNet):
    conditioned = True

    def __init__(self, manifest) -> None:
        super().__init__(manifest)
        self.text = TextSpec.of(manifest)
        self.unet: UNet | None = None
        self.embeddings: OrderedDict[str, torch.Tensor] = OrderedDict()

    def network(self, device: str) -> nn.Module:
        self.unet = load_model(self.manifest, device, kind="ddim-unet-text")
        return Conditioned(self.unet).eval()

    @torch.inference_mode()
    def embed(self, prompt: str) -> torch.Tensor:
        """The (text_dims,) embedding of a prompt ("" is the empty prompt), computed alone, float32."""
        if self.unet is None:
            raise RuntimeError("the network is not loaded")
        tokens = self.text.encode(prompt).tokens
        key = ",".join(map(str, tokens))  # prompts with the same known words share an embedding
        if key not in self.embeddings:
            device = next(self.unet.parameters()).device
            ids = torch.tensor([tokens], dtype=torch.long, device=device)
            self.embeddings[key] = self.unet.encode(ids)[0].float()
            if len(self.embeddings) > EMBEDDINGS_KEPT:
                self.embeddings.popitem(last=False)
        self.embeddings.move_to_end(key)
        return self.embeddings[key]

    def condition(self, prompt: str | None, guidance: float | None, negative: str | None = None) -> Condition:
        """Guidance with the negative prompt's embedding as the unconditional branch (diffusion.guidance), where it
        has an effect: at s = 0 (the prompt-free picture) and s = 1 (the conditional one) it is dropped, so those
        samples keep the bytes they have without one. The API refuses a negative prompt without a prompt."""
        plain = super().condition(prompt, guidance)
        if not negative or plain.embedding is None or plain.scale in (0, 1):
            return plain
        return Condition(plain.embedding, plain.scale, self.embed(negative))

    def probe_conditions(self, rows: int) -> torch.Tensor:
        """Conditions for the kernel probe: the empty prompt and single words of the vocabulary, alternating."""
        words = self.text.vocabulary.words
        gen = torch.Generator().manual_seed(PROBE_SEED)
        picks = torch.randperm(len(words), generator=gen)[:rows].tolist() if words else []
        prompts = ["" if i % 2 == 0 or not picks else words[picks[i % len(picks)]] for i in range(rows)]
        return torch.stack([self.embed(p) for p in prompts])
