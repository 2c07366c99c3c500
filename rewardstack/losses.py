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


POLICY_LOSSES = ("sigmoid", "ipo", "hinge", "simpo")


def policy_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor | None,
    ref_rejected_logps: torch.Tensor | None,
    beta: float,
    kind: str = "sigmoid",
    chosen_lengths: torch.Tensor | None = None,
    rejected_lengths: torch.Tensor | None = None,
    simpo_gamma: float = 0.5,
) -> torch.Tensor:
    """Per-pair token-level preference loss on sequence log-probabilities log π(y|x).

    With h = (log π(y_c) − log π_ref(y_c)) − (log π(y_r) − log π_ref(y_r)):
      sigmoid (DPO):  −log σ(β·h)
      ipo:            (h − 1/(2β))²
      hinge (SLiC):   max(0, 1 − β·h)
      simpo:          −log σ(β·(log π(y_c)/|y_c| − log π(y_r)/|y_r|) − γ)   (no reference)"""
    if kind == "simpo":
        if chosen_lengths is None or rejected_lengths is None:
            raise ValueError("simpo needs the response lengths")
        return -F.logsigmoid(beta * (chosen_logps / chosen_lengths - rejected_logps / rejected_lengths) - simpo_gamma)
    if ref_chosen_logps is None or ref_rejected_logps is None:
        raise ValueError(f"policy loss {kind!r} needs reference log-probabilities")
    h = (chosen_logps - ref_chosen_logps) - (rejected_logps - ref_rejected_logps)
    if kind == "sigmoid":
        return -F.logsigmoid(beta * h)
    if kind == "ipo":
        return (h - 1.0 / (2.0 * beta)) ** 2
    if kind == "hinge":
        return torch.relu(1.0 - beta * h)
    raise ValueError(f"unknown policy loss {kind!r}: use one of {', '.join(POLICY_LOSSES)}")


def implicit_reward(logps: torch.Tensor, ref_logps: torch.Tensor | None, beta: float, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """The reward a policy loss implies: β·(log π(y|x) − log π_ref(y|x)), or β·log π(y|x)/|y| for simpo
    (no reference, `lengths` given)."""
    if ref_logps is None:
        return beta * logps / lengths
    return beta * (logps - ref_logps)
