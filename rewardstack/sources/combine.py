"""Composite reward sources: normalisation, ensembles, and hierarchical (ALaRM) combinations.

The combination rules are pure functions of score arrays; the classes call their members and apply them.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from ..errors import UserError
from ..scores import RewardScores
from .kinds import Place, members, number, register_kind, required

ENSEMBLE_RULES = ("mean", "min", "uwo", "weighted")
HIERARCHY_MODES = ("holistic", "aspects", "weighted_sum", "hierarchical")


def parse_spec(spec: str, plain: Sequence[str], numbered: Sequence[str], what: str, usage: str) -> tuple[str, float]:
    """The grammar of rule and objective specs: NAME (one of `plain`) → (NAME, 0.0), or NAME:K (one of
    `numbered`, K a finite number ≥ 0) → (NAME, K). Anything else is a UserError `what 'spec': usage`."""
    name, colon, value = str(spec).strip().partition(":")
    if name in plain and not colon:
        return name, 0.0
    if name in numbered:
        try:
            k = float(value)
        except ValueError:
            raise UserError(f"{what} {spec!r}: {name} needs a number, as in {name}:0.5") from None
        if math.isfinite(k) and k >= 0:
            return name, k
    raise UserError(f"{what} {spec!r}: {usage}")


def parse_ensemble_rule(spec: str) -> tuple[str, float]:
    """'mean' | 'min' | 'weighted' | 'uwo:λ' → (rule, λ)."""
    return parse_spec(spec, ("mean", "min", "weighted"), ("uwo",), "ensemble combine",
                      "use mean, min, uwo:λ (mean − λ·variance across members, λ ≥ 0) or weighted")


def combine_ensemble(means: np.ndarray, stds: np.ndarray | None, rule: str, lam: float = 0.0, weights: Sequence[float] | None = None) -> RewardScores:
    """Combine members' rewards `means` (members, rows):
    mean: m̄ = (1/M) Σ_i m_i; min: min_i m_i; uwo:λ: m̄ − λ·(1/M) Σ_i (m_i − m̄)²; weighted: Σ_i w_i m_i.
    std = √(spread² + (1/M) Σ_i σ_i²) with spread² = (1/M) Σ_i (m_i − m̄)² (the members' disagreement)
    and σ_i the members' own stds (`stds`, same shape, when every member has one)."""
    means = np.asarray(means, dtype=np.float64)
    centre = means.mean(axis=0)
    spread = means.var(axis=0)
    if rule == "mean":
        combined = centre
    elif rule == "min":
        combined = means.min(axis=0)
    elif rule == "uwo":
        combined = centre - lam * spread
    elif rule == "weighted":
        if weights is None or len(weights) != len(means):
            raise ValueError(f"ensemble: weighted needs one weight per member ({len(means)})")
        combined = np.asarray(weights, dtype=np.float64) @ means
    else:
        raise ValueError(f"ensemble: unknown rule {rule!r}")
    variance = spread + (np.mean(np.square(stds), axis=0) if stds is not None else 0.0)
    return RewardScores(mean=combined, std=np.sqrt(variance))


def combine_hierarchy(
    holistic: np.ndarray,
    aspects: np.ndarray,
    mode: str,
    threshold: float = 0.0,
    holistic_weight: float = 1.0,
    aspect_weights: Sequence[float] = (),
) -> tuple[np.ndarray, np.ndarray]:
    """ALaRM's combination of a normalised holistic reward z_h (rows,) and normalised aspect rewards a_i
    (aspects, rows) with weights w_h, w_i. Returns (reward, gate):
    holistic: w_h·z_h; aspects: Σ w_i a_i; weighted_sum: w_h·z_h + Σ w_i a_i;
    hierarchical: w_h·z_h + gate·Σ w_i a_i with gate = 1[z_h ≥ τ] (aspects count only where the holistic
    reward is already high). gate is 1 everywhere for weighted_sum and aspects, 0 for holistic."""
    holistic = np.asarray(holistic, dtype=np.float64)
    weights = np.asarray(aspect_weights, dtype=np.float64)
    aspect_sum = weights @ np.asarray(aspects, dtype=np.float64) if len(weights) else np.zeros_like(holistic)
    if mode == "holistic":
        gate = np.zeros_like(holistic)
    elif mode in ("aspects", "weighted_sum"):
        gate = np.ones_like(holistic)
    elif mode == "hierarchical":
        gate = (holistic >= threshold).astype(np.float64)
    else:
        raise ValueError(f"hierarchical: mode must be one of {', '.join(HIERARCHY_MODES)}, not {mode!r}")
    base = np.zeros_like(holistic) if mode == "aspects" else holistic_weight * holistic
    return base + gate * aspect_sum, gate


class Normalized:
    """A source's rewards as z-scores: (r − μ)/σ, std/σ; μ and σ fixed or fitted on calibration rows."""

    def __init__(self, source, mean: float, std: float):
        if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
            raise UserError(f"normalize: need a finite mean and a std > 0, got mean {mean}, std {std}")
        self.source, self.mean, self.std = source, float(mean), float(std)

    def children(self) -> list:
        return [self.source]

    def score(self, prompts, responses, batch_size: int = 16) -> RewardScores:
        raw = self.source.score(prompts, responses, batch_size=batch_size)
        std = None if raw.std is None else raw.std / self.std
        return RewardScores(mean=(raw.mean - self.mean) / self.std, std=std, parts=raw.parts, truncated=raw.truncated)


class Ensemble:
    """Several sources combined per row by `rule` (combine_ensemble); parts: each member's reward."""

    def __init__(self, members: dict[str, object], rule: str = "mean", weights: Sequence[float] | None = None):
        if not members:
            raise UserError("ensemble: needs at least one member")
        self.members, self.weights = members, weights
        self.rule, self.lam = parse_ensemble_rule(rule)
        if self.rule == "weighted" and (weights is None or len(weights) != len(members)):
            raise UserError(f"ensemble: weighted needs `weights`, one per member ({len(members)})")

    def children(self) -> list:
        return list(self.members.values())

    def score(self, prompts, responses, batch_size: int = 16) -> RewardScores:
        scores = {name: member.score(prompts, responses, batch_size=batch_size) for name, member in self.members.items()}
        means = np.stack([s.mean for s in scores.values()])
        has_std = all(s.std is not None for s in scores.values())
        combined = combine_ensemble(means, np.stack([s.std for s in scores.values()]) if has_std else None, self.rule, self.lam, self.weights)
        combined.parts = {name: s.mean for name, s in scores.items()}
        combined.truncated = max(s.truncated for s in scores.values())
        return combined


class Hierarchical:
    """ALaRM: a holistic source gating weighted aspect sources (combine_hierarchy). parts: `holistic`,
    and every aspect by name (the gate, 1[z_h ≥ τ], follows from `holistic`). std, when every source has one: √(w_h²σ_h² + gate·Σ w_i²σ_i²),
    treating the sources as independent and the gate as fixed."""

    def __init__(self, holistic, aspects: dict[str, tuple[object, float]], mode: str = "hierarchical", threshold: float = 0.0, holistic_weight: float = 1.0):
        if mode not in HIERARCHY_MODES:
            raise UserError(f"hierarchical: mode must be one of {', '.join(HIERARCHY_MODES)}, not {mode!r}")
        if mode != "holistic" and not aspects:
            raise UserError(f"hierarchical: mode {mode} needs at least one aspect")
        self.holistic, self.aspects = holistic, aspects
        self.mode, self.threshold, self.holistic_weight = mode, float(threshold), float(holistic_weight)

    def children(self) -> list:
        return [self.holistic] + [source for source, _ in self.aspects.values()]

    def score(self, prompts, responses, batch_size: int = 16) -> RewardScores:
        h = self.holistic.score(prompts, responses, batch_size=batch_size)
        parts = {name: source.score(prompts, responses, batch_size=batch_size) for name, (source, _) in self.aspects.items()}
        weights = [weight for _, weight in self.aspects.values()]
        aspect_means = np.stack([s.mean for s in parts.values()]) if parts else np.zeros((0, len(h.mean)))
        reward, gate = combine_hierarchy(h.mean, aspect_means, self.mode, self.threshold, self.holistic_weight, weights)
        std = None
        if h.std is not None and all(s.std is not None for s in parts.values()):
            aspect_var = sum(w * w * np.square(s.std) for w, s in zip(weights, parts.values())) if parts else 0.0
            std = np.sqrt((0.0 if self.mode == "aspects" else self.holistic_weight**2 * np.square(h.std)) + gate * aspect_var)
        truncated = max([h.truncated] + [s.truncated for s in parts.values()])
        return RewardScores(mean=reward, std=std, parts={"holistic": h.mean, **{n: s.mean for n, s in parts.items()}}, truncated=truncated)


@register_kind("ensemble")
def _build_ensemble(node: dict, place: Place) -> Ensemble:
    return Ensemble(members(node, place), str(node.get("combine", "mean")), node.get("weights"))


@register_kind("hierarchical")
def _build_hierarchical(node: dict, place: Place) -> Hierarchical:
    """The holistic node and every aspect's source must be normalised (their scales are combined)."""
    where = place.where
    holistic = required(node, "holistic", where)
    _require_normalized(holistic, f"{where}.holistic")
    aspects = {}
    for i, aspect in enumerate(node.get("aspects") or []):
        at = f"{where}.aspects[{i}]"
        name = str(required(aspect, "name", at))
        _require_normalized(required(aspect, "source", at), f"{at}.source")
        aspects[name] = (place.build(aspect["source"], f".aspects[{i}].source"), number(aspect, "weight", at, default=1.0))
    return Hierarchical(place.build(holistic, ".holistic"), aspects, str(node.get("mode", "hierarchical")),
                        number(node, "threshold", where, default=0.0), number(node, "holistic_weight", where, default=1.0))


def _require_normalized(node, where: str) -> None:
    if isinstance(node, dict) and node.get("normalize") is None:
        raise UserError(f"{where}: hierarchical rewards combine normalised sources: add `normalize: calibrate` "
                        "(then run `rewardstack compose calibrate`) or `normalize: {mean: 0, std: 1}` to keep raw values")
