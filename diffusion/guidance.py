"""Classifier-free guidance (Ho & Salimans 2022) as rows of one network call.

Each sample carries its own condition: a prompt embedding (or none) and a guidance scale s. Its
ε̂ comes from at most two rows of the same call, the unconditional row (the empty prompt's
embedding, or a negative prompt's) and the conditional one, mixed by eq. 6 written with s = 1 + w. A sample without a
prompt, or with s = 0, needs the unconditional row alone; s = 1 needs the conditional row alone.
Every row is computed as if alone (the kernel probe checks it) and the mix is elementwise, so a
sample's ε̂ never depends on the prompts or scales of the samples beside it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

# network(x, time, c) for one call of rows, each with its own (D,) condition c.
ConditionedModel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def guided_eps(eps_uncond: torch.Tensor, eps_cond: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Ho & Salimans 2022, eq. 6 with s = 1 + w: ε̂ = ε̂(x, ∅) + s·(ε̂(x, c) − ε̂(x, ∅)); with a negative prompt n,
    its standard generalisation ε̂ = ε̂(x, n) + s·(ε̂(x, c) − ε̂(x, n)): `eps_uncond` is then ε̂(x, n).

    Three separate elementwise ops, each rounded once: the same bits for a row in any batch."""
    return eps_uncond + scale * (eps_cond - eps_uncond)


@dataclass(frozen=True)
class Condition:
    """One sample's text condition: its prompt's embedding (None: no prompt), its guidance scale s, and the embedding
    of its unconditional branch where that is not the empty prompt's (a negative prompt's; None: the empty one)."""

    embedding: torch.Tensor | None
    scale: float = 1.0
    negative: torch.Tensor | None = None

    @property
    def rows(self) -> tuple[bool, bool]:
        """(needs the unconditional row, needs the conditional row)."""
        if self.embedding is None or self.scale == 0:
            return True, False
        if self.scale == 1:
            return False, True
        return True, True


class Guidance:
    """ε̂ of a batch of samples under their conditions, from one call of the conditioned network.

    `empty` is the (D,) embedding of the empty prompt (the unconditional branch); `conditions` are the
    samples' in their original order, and each call names which of them are still in the run."""

    def __init__(self, empty: torch.Tensor, conditions: Sequence[Condition]) -> None:
        self.empty = empty
        self.conditions = list(conditions)

    def rows_per_sample(self, samples: Sequence[int]) -> int:
        return sum(sum(self.conditions[i].rows) for i in samples)

    def __call__(self, model: ConditionedModel, x: torch.Tensor, times: torch.Tensor, samples: Sequence[int]):
        """ε̂ for the current rows `x` (B, ...) at `times`; `samples` are their indices into `conditions`."""
        index, cond, uncond_at, cond_at = [], [], [], []
        for j, i in enumerate(samples):
            c = self.conditions[i]
            want_uncond, want_cond = c.rows
            uncond_at.append(len(index) if want_uncond else -1)
            if want_uncond:
                index.append(j)
                cond.append(self.empty if c.negative is None else c.negative)  # ∅, or the negative prompt n
            cond_at.append(len(index) if want_cond else -1)
            if want_cond:
                index.append(j)
                cond.append(c.embedding)
        rows = torch.tensor(index, device=x.device)
        c_rows = torch.stack([e.to(device=x.device) for e in cond])
        out = model(x[rows], times[rows], c_rows)
        eps = torch.empty_like(x, dtype=out.dtype)
        mixed = [j for j in range(len(samples)) if uncond_at[j] >= 0 and cond_at[j] >= 0]
        single = [j for j in range(len(samples)) if j not in set(mixed)]
        if single:
            at = torch.tensor([max(uncond_at[j], cond_at[j]) for j in single], device=x.device)
            eps[torch.tensor(single, device=x.device)] = out[at]
        if mixed:
            u = out[torch.tensor([uncond_at[j] for j in mixed], device=x.device)]
            c = out[torch.tensor([cond_at[j] for j in mixed], device=x.device)]
            scales = [self.conditions[samples[j]].scale for j in mixed]
            s = torch.tensor(scales, dtype=out.dtype, device=x.device).reshape(-1, *([1] * (x.dim() - 1)))
            eps[torch.tensor(mixed, device=x.device)] = guided_eps(u, c, s)
        return eps
