"""Best-of-n: selection objectives, the exact best-of-n estimator, and gold answer checking.

From N scored samples of one prompt, best-of-n for n ≤ N is judged by its expectation over all size-n
subsets (not one random draw): sorted by selection score, the sample at rank i (1-based, ascending) is the
best of a uniformly random n-subset with probability C(i−1, n−1)/C(N, n). Tied scores form one group,
the subset's best falls in a group of ranks a..b with probability (C(b, n) − C(a−1, n))/C(N, n), and a
tie is broken at random, so the group contributes the mean of its members' values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from .errors import UserError

if TYPE_CHECKING:
    from .data.pools import Pool


@dataclass(frozen=True)
class Objective:
    """How samples are ranked: mean (μ), lcb:k (μ − k·σ) or var:k (μ − k·σ²)."""

    kind: str
    k: float = 0.0

    @property
    def name(self) -> str:
        return self.kind if self.kind == "mean" else f"{self.kind}:{self.k:g}"

    @classmethod
    def parse(cls, spec: str) -> "Objective":
        kind, _, value = spec.strip().partition(":")
        if kind == "mean" and not value:
            return cls("mean")
        if kind in ("lcb", "var"):
            try:
                k = float(value)
            except ValueError:
                raise UserError(f"objective {spec!r}: {kind} needs a number, as in {kind}:1.0") from None
            if not math.isfinite(k) or k < 0:
                raise UserError(f"objective {spec!r}: k must be a finite number ≥ 0")
            return cls(kind, k)
        raise UserError(f"objective {spec!r}: use mean, lcb:K (mean − K·std) or var:K (mean − K·variance)")

    def score(self, mean: np.ndarray, std: np.ndarray | None) -> np.ndarray:
        if self.kind == "mean":
            return np.asarray(mean, dtype=np.float64)
        if std is None:
            raise UserError(f"objective {self.name} needs rewards with a std: fit a posterior first (rewardstack laplace)")
        penalty = np.asarray(std) if self.kind == "lcb" else np.square(std)
        return np.asarray(mean, dtype=np.float64) - self.k * penalty


def _log_choose(k: np.ndarray, n: int) -> np.ndarray:
    """log C(k, n), −inf where k < n."""
    k = np.asarray(k, dtype=np.float64)
    lg = np.vectorize(math.lgamma, otypes=[np.float64])
    out = np.full(k.shape, -np.inf)
    ok = k >= n
    out[ok] = lg(k[ok] + 1) - lg(n + 1) - lg(k[ok] - n + 1)
    return out


def expected_best_of_n(scores: np.ndarray, values: np.ndarray, ns: Sequence[int]) -> np.ndarray:
    """E[value of the highest-scoring sample among a uniformly random n-subset] for each n in `ns`,
    exactly over all C(N, n) subsets, ties in `scores` broken uniformly (see the module docstring)."""
    scores, values = np.asarray(scores, dtype=np.float64), np.asarray(values, dtype=np.float64)
    total = len(scores)
    if total == 0 or len(values) != total:
        raise ValueError("expected_best_of_n needs as many values as scores, at least one")
    order = np.argsort(scores, kind="stable")
    sorted_scores, sorted_values = scores[order], values[order]
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], total]  # group g holds ranks starts[g]+1 … ends[g]
    group_means = np.add.reduceat(sorted_values, starts) / (ends - starts)
    out = np.empty(len(ns))
    for j, n in enumerate(ns):
        if not 1 <= n <= total:
            raise ValueError(f"n = {n} is outside 1 … {total}")
        log_all = _log_choose(np.array([total]), n)[0]
        p = np.exp(_log_choose(ends, n) - log_all) - np.exp(_log_choose(starts, n) - log_all)
        out[j] = float(p @ group_means)
    return out


def best_of_n_kl(n: int | np.ndarray) -> np.ndarray:
    """KL(best-of-n ‖ base policy) = log n − (n − 1)/n."""
    n = np.asarray(n, dtype=np.float64)
    return np.log(n) - (n - 1) / n


def run_best_of_n(source, pools: Sequence["Pool"], objectives: Sequence[Objective], batch_size: int = 16) -> dict[str, Any]:
    """Score every response of every pool with `source` (one call, so batches mix pools) and compute, per
    objective and pool, the exact expected proxy reward (mean) and gold of best-of-n for n = 1 … N.
    Returns {"pools": per-pool records, "curves": per objective, means over pools for n = 1 … min N,
    "n", "kl", "truncated"}."""
    if not pools:
        raise UserError("best-of-n: no pools")
    prompts = [pool.prompt for pool in pools for _ in pool.responses]
    responses = [r for pool in pools for r in pool.responses]
    scores = source.score(prompts, responses, batch_size=batch_size)
    has_gold = all(pool.gold is not None for pool in pools)
    n_max = min(len(pool.responses) for pool in pools)
    ns = list(range(1, n_max + 1))
    records, start = [], 0
    curves = {o.name: {"proxy": np.zeros(n_max), "gold": np.zeros(n_max) if has_gold else None} for o in objectives}
    for pool in pools:
        end = start + len(pool.responses)
        mean = scores.mean[start:end]
        std = None if scores.std is None else scores.std[start:end]
        record = {"key": pool.key, "responses": len(pool.responses), "reward": mean.tolist(), "objectives": {}}
        if std is not None:
            record["reward_std"] = std.tolist()
        if pool.gold is not None:
            record["gold"] = pool.gold.tolist()
        for objective in objectives:
            selection = objective.score(mean, std)
            best = int(np.argmax(selection))
            entry = {"best": pool.response_ids[best], "proxy": expected_best_of_n(selection, mean, ns).tolist()}
            curves[objective.name]["proxy"] += entry["proxy"]
            if pool.gold is not None:
                entry["gold"] = expected_best_of_n(selection, pool.gold, ns).tolist()
                if has_gold:
                    curves[objective.name]["gold"] += entry["gold"]
            record["objectives"][objective.name] = entry
        records.append(record)
        start = end
    summary = {
        name: {kind: (values / len(pools)).tolist() for kind, values in curve.items() if values is not None}
        for name, curve in curves.items()
    }
    return {"pools": records, "curves": summary, "n": ns, "kl": best_of_n_kl(np.array(ns)).tolist(), "truncated": scores.truncated}


def set_gold_from(source, pools: Sequence["Pool"], batch_size: int = 16) -> None:
    """Make another reward source the gold: each pool's gold becomes its rewards (one scoring call)."""
    scores = source.score([p.prompt for p in pools for _ in p.responses], [r for p in pools for r in p.responses], batch_size=batch_size)
    start = 0
    for pool in pools:
        pool.gold = np.asarray(scores.mean[start : start + len(pool.responses)], dtype=np.float64)
        start += len(pool.responses)


def plot_best_of_n(result: dict[str, Any], path: str | Path, title: str = "best-of-n") -> None:
    """A grid of gold (when known) and proxy reward of best-of-n, against n (log scale) and against KL,
    one line per objective."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = [k for k in ("gold", "proxy") if all(k in curve for curve in result["curves"].values())]
    fig, axes = plt.subplots(len(kinds), 2, figsize=(11, 3.8 * len(kinds)), squeeze=False)
    for row, kind in enumerate(kinds):
        for col, (x, label) in enumerate(((result["n"], "n"), (result["kl"], "KL(best-of-n ‖ policy), nats"))):
            axis = axes[row][col]
            for name, curve in result["curves"].items():
                axis.plot(x, curve[kind], marker="." if len(x) < 40 else None, label=name)
            axis.set_xlabel(label)
            axis.set_ylabel(f"{kind} reward of best-of-n")
            axis.grid(alpha=0.3)
            if col == 0:
                axis.set_xscale("log")
    axes[0][1].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
