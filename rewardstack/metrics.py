"""Pairwise metrics of a reward model, as pure functions of reward arrays."""

from __future__ import annotations

import numpy as np


def preference_probability(r_chosen: np.ndarray, r_rejected: np.ndarray) -> np.ndarray:
    """P(chosen ≻ rejected) = σ(r_c − r_r)."""
    return 1.0 / (1.0 + np.exp(-(np.asarray(r_chosen) - np.asarray(r_rejected))))


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


def pairwise_metrics(r_chosen: np.ndarray, r_rejected: np.ndarray) -> dict[str, float]:
    """accuracy (ties count ½), mean margin r_c − r_r, and calibration of p = σ(r_c − r_r):
    ECE (10 bins), Brier = mean (1 − p)², NLL = mean −log p."""
    delta = np.asarray(r_chosen, dtype=np.float64) - np.asarray(r_rejected, dtype=np.float64)
    p = preference_probability(delta, 0.0)
    return {
        "pairs": int(len(delta)),
        "accuracy": float(np.mean((delta > 0) + 0.5 * (delta == 0))),
        "mean_margin": float(delta.mean()),
        "ece": expected_calibration_error(p),
        "brier": float(np.mean((1.0 - p) ** 2)),
        "nll": float(np.mean(np.logaddexp(0.0, -delta))),
    }
