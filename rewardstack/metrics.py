"""Pairwise metrics of a reward model, as pure functions of reward arrays."""

from __future__ import annotations

import numpy as np


def preference_probability(r_chosen: np.ndarray, r_rejected: np.ndarray) -> np.ndarray:
    """P(chosen ≻ rejected) = σ(r_c − r_r), as exp(−log(1 + e^{−Δ})): no overflow for any gap Δ."""
    delta = np.asarray(r_chosen, dtype=np.float64) - np.asarray(r_rejected, dtype=np.float64)
    return np.exp(-np.logaddexp(0.0, -delta))


def expected_calibration_error(p: np.ndarray, bins: int = 10) -> float:
    """ECE of P(chosen ≻ rejected) for pairs whose outcome is always "chosen".

    Each pair counts in both orientations, (p, 1) and (1 − p, 0), so the result does not depend on
    which response is listed first. With 10 equal-width bins B_b on [0, 1]:
    ECE = Σ_b (|B_b| / 2N) · |mean outcome in B_b − mean p in B_b|."""
    p = np.asarray(p, dtype=np.float64)
    probs = np.concatenate([p, 1.0 - p])
    outcomes = np.concatenate([np.ones_like(p), np.zeros_like(p)])
    index = np.minimum((probs * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        in_bin = index == b
        if in_bin.any():
            total += in_bin.sum() * abs(outcomes[in_bin].mean() - probs[in_bin].mean())
    return float(total / len(probs))


def tie_half_correct(delta: np.ndarray) -> np.ndarray:
    """Per pair with reward margin Δ = r_chosen − r_rejected: 1 when Δ > 0, ½ when Δ = 0, else 0."""
    delta = np.asarray(delta, dtype=np.float64)
    return (delta > 0) + 0.5 * (delta == 0)


def logit_metrics(logits: np.ndarray) -> dict[str, float]:
    """Metrics of P(chosen ≻ rejected) = σ(z) for pairs whose outcome is "chosen": accuracy (z = 0 counts
    ½), strict_accuracy (z = 0 counts 0, RewardBench's convention), ECE (10 bins), Brier = mean (1 − p)²,
    NLL = mean −log p."""
    z = np.asarray(logits, dtype=np.float64)
    p = preference_probability(z, 0.0)
    return {
        "accuracy": float(np.mean(tie_half_correct(z))),
        "strict_accuracy": float(np.mean(z > 0)),
        "ece": expected_calibration_error(p),
        "brier": float(np.mean((1.0 - p) ** 2)),
        "nll": float(np.mean(np.logaddexp(0.0, -z))),
    }


def pairwise_metrics(r_chosen: np.ndarray, r_rejected: np.ndarray) -> dict[str, float]:
    """pairs, mean margin r_c − r_r, and logit_metrics of p = σ(r_c − r_r)."""
    delta = np.asarray(r_chosen, dtype=np.float64) - np.asarray(r_rejected, dtype=np.float64)
    return {"pairs": int(len(delta)), "mean_margin": float(delta.mean()), **logit_metrics(delta)}


def auroc(negatives: np.ndarray, positives: np.ndarray) -> float:
    """Area under the ROC curve of a score separating positives from negatives: P(s⁺ > s⁻) + ½ P(s⁺ = s⁻),
    from average ranks (Mann–Whitney U / (n⁺ n⁻))."""
    negatives, positives = np.asarray(negatives, dtype=np.float64), np.asarray(positives, dtype=np.float64)
    if len(negatives) == 0 or len(positives) == 0:
        raise ValueError("auroc needs at least one score of each class")
    scores = np.concatenate([negatives, positives])
    _, group, counts = np.unique(scores, return_inverse=True, return_counts=True)
    average_rank = np.cumsum(counts) - (counts - 1) / 2  # 1-based rank, averaged over equal scores
    n_pos = len(positives)
    u = average_rank[group[len(negatives) :]].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * len(negatives)))
