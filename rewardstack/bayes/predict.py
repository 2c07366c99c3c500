"""The linearised Laplace predictive: rewards with variances, and pairwise probabilities.

f(θ) ≈ f(θ*) + J (θ − θ*), so Var[f] = J Σ Jᵀ. One forward pass with the posterior layers recorded and one
backward pass of Σ_i r_i give every sequence's Jacobian per layer, J_i = Σ_t g_it a_itᵀ (a batched
matmul); Jacobians of differences are differences of Jacobians, so Var[r_c − r_r] = J_Δ Σ J_Δᵀ with
J_Δ = J_c − J_r carries the covariance of the two rewards.
"""

from __future__ import annotations

import contextlib
import math
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.encode import PROGRESS_MIN_BATCHES, Encoded, EncodedPairs, length_batches
from ..packing import pack, plan_batches, prompt_segments
from .posterior import PRIOR_GRID
from .taps import posterior_layers, record


def probit_logit(mean_delta: np.ndarray, var_delta: np.ndarray) -> np.ndarray:
    """Logit of the Laplace pairwise probability P(y1 ≻ y2) ≈ σ(μ_Δ / √(1 + π·Var[Δ]/8))."""
    return np.asarray(mean_delta) / np.sqrt(1.0 + math.pi * np.asarray(var_delta) / 8.0)


@contextlib.contextmanager
def evaluating(model):
    """The model in eval mode within the block, its former mode restored after."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _moments(model, layers, blocks, sequences: Sequence[Encoded], segments: Sequence[Sequence[int]], combinations: torch.Tensor,
             deltas: torch.Tensor):
    """Rewards of the `segments`' sequences, (S,) in index order, and the variance of each combination
    Σ_s C_qs r_s: (Q, len(deltas)). `layers`: the posterior layers by name; `blocks`: their posterior
    blocks by name. One backward pass of Σ_s r_s gives each token the gradient of its sequence's reward
    as long as no token serves two sequences: segments of one sequence each, unless the posterior is the
    head's alone (its Jacobian, the last hidden state, needs no gradient inside the backbone)."""
    device = model.head.weight.device
    combinations = combinations.to(device)
    variance = torch.zeros(len(combinations), len(deltas), dtype=torch.float64, device=device)
    packed = pack(sequences, segments, model.tokenizer.pad_token_id, model.compute.pack_tokens).to(device)
    present = (packed.tokens >= 0)[..., None]

    def on_gradient(name: str, a: torch.Tensor, g: torch.Tensor) -> None:
        nonlocal variance
        if name != "head":  # (rows, T, ·) → each sequence's tokens, (S, longest, ·)
            a, g = (x.flatten(0, 1)[packed.tokens.clamp_min(0)] * present for x in (a, g))
        jacobians = torch.einsum("qs,soi->qoi", combinations, g.transpose(1, 2) @ a)
        variance += blocks[name].variances(jacobians, deltas).to(device)

    with record(model, layers, on_gradient) as backward, model.autocast():
        rewards = model(packed)
        backward(rewards.sum())
    return rewards.detach().double().cpu().numpy(), variance.cpu().numpy()


def _segments(layers, groups: Sequence[Sequence[int]]) -> list[list[int]]:
    """`groups` of sequences that may share their prefix (only for a head posterior), else one each."""
    return [list(g) for g in groups] if list(layers) == ["head"] else [[i] for g in groups for i in g]


def reward_moments(model, sequences: Sequence[Encoded], batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of each sequence's reward under model.posterior, in input order."""
    posterior = model.posterior
    layers, blocks = posterior_layers(model, posterior.subset), {b.name: b for b in posterior.blocks}
    mean, var = np.empty(len(sequences)), np.empty(len(sequences))
    deltas = torch.tensor([posterior.prior_precision])
    segments = _segments(layers, prompt_segments(sequences, model.compute.share_prompts))
    with evaluating(model):
        batches = plan_batches(sequences, segments, batch_size * max(len(s) for s in sequences))
        for batch in tqdm(batches, desc="score with std", leave=False, disable=len(batches) < PROGRESS_MIN_BATCHES):
            indices = sorted(i for members in batch for i in members)
            mean[indices], v = _moments(model, layers, blocks, sequences, batch, torch.eye(len(indices)), deltas)
            var[indices] = v[:, 0]
    return mean, var


def pair_moments(model, pairs: EncodedPairs, batch_size: int = 8, prior_precisions: Sequence[float] | None = None) -> dict[str, np.ndarray]:
    """For each pair: rewards `chosen`, `rejected`, their variances `var_chosen`, `var_rejected` and
    `var_delta` = Var[r_c − r_r] under model.posterior, each variance of shape (pairs, len(prior_precisions))
    (default: the posterior's own δ, one column)."""
    posterior = model.posterior
    layers, blocks = posterior_layers(model, posterior.subset), {b.name: b for b in posterior.blocks}
    deltas = torch.tensor([posterior.prior_precision] if prior_precisions is None else list(prior_precisions), dtype=torch.float64)
    n = len(pairs)
    out = {"chosen": np.empty(n), "rejected": np.empty(n)}
    out.update({k: np.empty((n, len(deltas))) for k in ("var_chosen", "var_rejected", "var_delta")})
    with evaluating(model):
        batches = length_batches([pairs.tokens(i) for i in range(n)], batch_size)
        for batch in tqdm(batches, desc="pairs with std", leave=False, disable=len(batches) < PROGRESS_MIN_BATCHES):
            b = len(batch)
            eye = torch.eye(b)
            combinations = torch.cat([torch.eye(2 * b), torch.cat([eye, -eye], dim=1)])
            sequences = [pairs.chosen[i] for i in batch] + [pairs.rejected[i] for i in batch]
            segments = _segments(layers, [[k, b + k] for k in range(b)])
            r, v = _moments(model, layers, blocks, sequences, segments, combinations, deltas)
            out["chosen"][batch], out["rejected"][batch] = r[:b], r[b:]
            out["var_chosen"][batch], out["var_rejected"][batch], out["var_delta"][batch] = v[:b], v[b : 2 * b], v[2 * b :]
    return out


def validation_nll_curve(model, pairs: EncodedPairs, batch_size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Mean NLL of the Laplace pairwise probability under model.posterior on `pairs` for each δ of
    PRIOR_GRID (one pass)."""
    moments = pair_moments(model, pairs, batch_size, PRIOR_GRID)
    mean_delta = (moments["chosen"] - moments["rejected"])[:, None]
    nll = np.logaddexp(0.0, -probit_logit(mean_delta, moments["var_delta"])).mean(0)
    return PRIOR_GRID, nll
