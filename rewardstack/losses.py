"""Training losses as pure functions of reward tensors."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bradley_terry_loss(
    r_chosen: torch.Tensor,
    r_rejected: torch.Tensor,
    margin: torch.Tensor | None = None,
    center_coefficient: float = 0.0,
) -> torch.Tensor:
    """Per-pair Bradley–Terry loss: −log σ(r_c − r_r − m) + c·(r_c + r_r)².

    m is the optional per-pair margin (0 where absent); the second term, with coefficient c, keeps
    rewards centred on zero. Returns shape (pairs,); callers take the (weighted) mean."""
    delta = r_chosen - r_rejected
    if margin is not None:
        delta = delta - margin
    loss = -F.logsigmoid(delta)
    if center_coefficient:
        loss = loss + center_coefficient * (r_chosen + r_rejected) ** 2
    return loss

