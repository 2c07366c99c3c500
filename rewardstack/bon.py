"""Best-of-n: selection objectives, the exact best-of-n estimator, and gold answer checking.

From N scored samples of one prompt, best-of-n for n ≤ N is judged by its expectation over all size-n
subsets (not one random draw): sorted by selection score, the sample at rank i (1-based, ascending) is the
best of a uniformly random n-subset with probability C(i−1, n−1)/C(N, n). Tied scores form one group,
the subset's best falls in a group of ranks a..b with probability (C(b, n) − C(a−1, n))/C(N, n), and a
tie is broken at random, so the group contributes the mean of its members' values.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from .errors import UserError, require
from .files import atomic_path, mark_output_dir, write_json, write_text
from .config import ComputeConfig
from .distributed import is_main_process, score_across_processes
from .options import option
from .sampling import SamplingConfig
from .scores import RewardScores
from .sources.combine import Ensemble, Normalized, combine_ensemble, parse_spec

if TYPE_CHECKING:
    from .data.pools import Pool


@dataclass(frozen=True)
class Objective:
    """How samples are ranked: mean (μ), lcb:k (μ − k·σ), var:k (μ − k·σ²), slcb:k (μ − k·sd(μ)·σ/mean(σ),
    sd and mean over the rows scored together, a pool: the penalty in units of the pool's reward spread,
    whatever the scale of σ), and for an ensemble source, from its members' rewards m_i: min (min_i m_i)
    or uwo:k (mean_i m_i − k·variance_i m_i)."""

    kind: str
    k: float = 0.0

    @property
    def name(self) -> str:
        return self.kind if self.kind in ("mean", "min") else f"{self.kind}:{self.k:g}"

    @property
    def needs_members(self) -> bool:
        return self.kind in ("min", "uwo")

    @classmethod
    def parse(cls, spec: str) -> "Objective":
        return cls(*parse_spec(spec, ("mean", "min"), ("lcb", "var", "slcb", "uwo"), "objective",
                               "use mean, lcb:K (mean − K·std), var:K (mean − K·variance), slcb:K (lcb with the std rescaled to "
                               "the pool's reward spread), or for an ensemble min or uwo:K (members' mean − K·their variance), K ≥ 0"))

    def score(self, scores: RewardScores) -> np.ndarray:
        """Selection score of each row of `scores` (an ensemble's `parts` are its members' rewards)."""
        if self.needs_members:
            if not scores.parts:
                raise UserError(f"objective {self.name} needs an ensemble reward source (its members' rewards)")
            return combine_ensemble(np.stack(list(scores.parts.values())), None, self.kind, self.k).mean
        if self.kind == "mean":
            return np.asarray(scores.mean, dtype=np.float64)
        if scores.std is None:
            raise UserError(f"objective {self.name} needs rewards with a std: fit a posterior first (rewardstack laplace)")
        mean, std = np.asarray(scores.mean, dtype=np.float64), np.asarray(scores.std, dtype=np.float64)
        if self.kind == "slcb":
            typical = std.mean()
            return mean - self.k * mean.std() * (std / typical if typical > 0 else 0.0)
        return mean - self.k * (std if self.kind == "lcb" else np.square(std))


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
    order = np.argsort(scores)  # the order within a tie is irrelevant: a tie contributes its mean
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


def score_pools(source, pools: Sequence["Pool"], batch_size: int = 16) -> tuple[list[RewardScores], int]:
    """Every response of every pool scored with `source` in one call (so batches mix pools), shared out
    among the processes of an `accelerate launch`: the scores of each pool, and how many responses were
    truncated."""
    scores = score_across_processes(source, [p.prompt for p in pools for _ in p.responses], [r for p in pools for r in p.responses], batch_size)
    per_pool, start = [], 0
    for pool in pools:
        per_pool.append(scores.rows(slice(start, start + len(pool.responses))))
        start += len(pool.responses)
    return per_pool, scores.truncated


def run_best_of_n(source, pools: Sequence["Pool"], objectives: Sequence[Objective], batch_size: int = 16) -> dict[str, Any]:
    """Score the pools with `source` and compute, per objective and pool, the exact expected proxy reward
    (mean) and gold of best-of-n for n = 1 … N. Returns {"pools": per-pool records, "curves": per
    objective, means over pools for n = 1 … min N (gold only when every pool has it), "n", "kl", "truncated"}."""
    if not pools:
        raise UserError("best-of-n: no pools")
    members_source = source.source if isinstance(source, Normalized) else source
    for objective in objectives:
        if objective.needs_members and not isinstance(members_source, Ensemble):
            raise UserError(f"objective {objective.name} needs an ensemble reward source (kind: ensemble in a YAML tree)")
    scored, truncated = score_pools(source, pools, batch_size)
    kinds = ("proxy", "gold") if all(pool.gold is not None for pool in pools) else ("proxy",)
    ns = list(range(1, min(len(pool.responses) for pool in pools) + 1))
    records = []
    for pool, scores in zip(pools, scored):
        record = {"key": pool.key, "responses": len(pool.responses), **scores.row_fields(slice(None)), "objectives": {}}
        if pool.gold is not None:
            record["gold"] = pool.gold.tolist()
        for objective in objectives:
            selection = objective.score(scores)
            entry = {"best": pool.response_ids[int(np.argmax(selection))], "proxy": expected_best_of_n(selection, scores.mean, ns).tolist()}
            if pool.gold is not None:
                entry["gold"] = expected_best_of_n(selection, pool.gold, ns).tolist()
            record["objectives"][objective.name] = entry
        records.append(record)
    curves = {
        o.name: {kind: np.mean([r["objectives"][o.name][kind] for r in records], axis=0).tolist() for kind in kinds}
        for o in objectives
    }
    return {"pools": records, "curves": curves, "n": ns, "kl": best_of_n_kl(np.array(ns)).tolist(), "truncated": truncated}


def run_bandit_best_of_n(selector, pools: Sequence["Pool"], batch_size: int = 16) -> dict[str, Any]:
    """LASeR best-of-n: pools in order; for each, the bandit picks a member, the member's best response's
    gold is the bandit's feedback. Beside the bandit, the same pools under each member alone, a uniformly
    random member (the mean of the members' curves: its exact expectation) and the ensemble mean of the
    members' rewards, each divided by its std over all responses of the run (a z-score without the shift,
    which moves no ranking). Every member scores every pool once for these baselines; the bandit itself
    only needs its chosen member. Returns run_best_of_n's layout (gold curves) plus the arm of each pool,
    arm counts by pool group, and the bandit's log."""
    if not pools:
        raise UserError("best-of-n: no pools")
    if any(pool.gold is None for pool in pools):
        raise UserError("bandit best-of-n: --feedback gold needs gold for every pool (gold, answer, or --gold-reward)")
    scored = {name: score_pools(member, pools, batch_size) for name, member in selector.members.items()}
    member_scores = {name: scores for name, (scores, _) in scored.items()}
    spread = {name: np.concatenate([s.mean for s in scores]).std() or 1.0 for name, scores in member_scores.items()}
    ns = list(range(1, min(len(pool.responses) for pool in pools) + 1))
    records, by_group = [], defaultdict(lambda: dict.fromkeys(selector.names, 0))
    for t, pool in enumerate(pools):
        contexts, (arm,) = selector.select([pool.prompt])
        name = selector.names[arm]
        chosen = member_scores[name][t].mean
        best = int(np.argmax(chosen))
        selector.feedback(contexts[0], arm, float(pool.gold[best]), pool.prompt)
        by_group[pool.group or "all"][name] += 1
        members = {m: expected_best_of_n(member_scores[m][t].mean, pool.gold, ns) for m in selector.names}
        ensemble = np.mean([member_scores[m][t].mean / spread[m] for m in selector.names], axis=0)
        curves = {"bandit": members[name], "random": np.mean(list(members.values()), axis=0),
                  "ensemble": expected_best_of_n(ensemble, pool.gold, ns), **{f"only:{m}": c for m, c in members.items()}}
        records.append({"key": pool.key, "group": pool.group, "arm": name, "best": pool.response_ids[best], "feedback": float(pool.gold[best]),
                        "gold": pool.gold.tolist(), "rewards": {m: member_scores[m][t].mean.tolist() for m in selector.names},
                        "objectives": {method: {"gold": curve.tolist()} for method, curve in curves.items()}})
    methods = list(records[0]["objectives"])
    return {"pools": records, "curves": {m: {"gold": np.mean([r["objectives"][m]["gold"] for r in records], axis=0).tolist()} for m in methods},
            "n": ns, "kl": best_of_n_kl(np.array(ns)).tolist(), "truncated": max(truncated for _, truncated in scored.values()),
            "arms": [r["arm"] for r in records], "arm_counts_by_group": dict(by_group), "arm_counts": selector.arm_counts()}


@dataclass
class BonConfig:
    """Options of `rewardstack bon` (and of `best_of_n`)."""

    objective: list[str] = option(help="mean, lcb:K (mean − K·std), var:K (mean − K·variance), slcb:K (mean − K·the pool's reward "
                                       "spread·std/the pool's mean std), or for an ensemble min or uwo:K; "
                                       "repeatable", factory=lambda: ["mean"])
    policy: str = option("smollm2-135m", "Policy that prompts are sampled from: smollm2-135m, a local path or Hugging Face id")
    sampling: SamplingConfig = option(factory=SamplingConfig)
    prompt_key: str = option("prompt", "Column of the prompt in the prompts")
    answer_key: str = option("answer", "Column of the verifiable answer in the prompts (gold = the answer matches)")
    max_pools: int | None = option(None, "Use only the first N pools or prompts")
    feedback: str | None = option(None, "With a bandit reward: gold, the gold of the chosen response is the bandit's feedback")
    batch_size: int = option(16, "Sequences per forward pass")
    skip_invalid: bool = option(False, "Count and skip invalid rows instead of stopping at the first")
    compute: ComputeConfig = option(factory=ComputeConfig)

    def __post_init__(self) -> None:
        objectives = self.objectives()
        require(self, "objective", len({o.name for o in objectives}) == len(objectives), "a list without repeats")
        require(self, "feedback", self.feedback in (None, "gold"), "gold (from the pools' gold, answers, or a gold reward), or unset")
        require(self, "batch_size", self.batch_size >= 1, "at least 1")
        if self.max_pools is not None:
            require(self, "max_pools", self.max_pools >= 1, "at least 1")

    def objectives(self) -> list[Objective]:
        return [Objective.parse(spec) for spec in self.objective]


def best_of_n(source, config: BonConfig, pools: Any = None, prompts: Any = None, gold_source=None, output_dir: str | Path | None = None) -> dict[str, Any]:
    """Best-of-n of `source` on exactly one of `pools` (scored candidates: anything `load_pools` reads)
    or `prompts` (rows with a prompt and optionally an answer: `config.sampling.n` responses each are
    sampled from `config.policy`). `gold_source`, a reward source, replaces the pools' gold. With
    `config.feedback` and a bandit source, LASeR's bandit best-of-n (run_bandit_best_of_n). Writes
    pools.jsonl (sampled pools), results.jsonl, summary.json, best_of_n.png and a bandit's state and log
    into `output_dir` when given. Returns the summary: the curves and what was read, skipped, cut."""
    from .data.pools import load_pools, load_prompts, write_pools
    from .sampling import sample_pools
    from .laser.selector import BanditSelector

    if (pools is None) == (prompts is None):
        raise UserError("bon: give exactly one of --pools (scored candidates) and --prompts (sample from --policy)")
    if config.feedback is not None and not isinstance(source, BanditSelector):
        raise UserError("bon: --feedback needs a bandit reward (kind: bandit in a YAML tree)")
    unfinished = None
    if pools is not None:
        pool_list, report = load_pools(pools, config.skip_invalid)
        pool_list = pool_list[: config.max_pools]
    else:
        prompt_rows, report = load_prompts(prompts, config.prompt_key, config.answer_key, config.skip_invalid)
        pool_list, unfinished = sample_pools(config.policy, prompt_rows[: config.max_pools], config.sampling, config.compute.device)
        if output_dir is not None and is_main_process():
            mark_output_dir(output_dir, "bon")
            write_pools(pool_list, Path(output_dir) / "pools.jsonl")
    if gold_source is not None:
        set_gold_from(gold_source, pool_list, config.batch_size)
    if config.feedback is not None:
        result = run_bandit_best_of_n(source, pool_list, config.batch_size)
    else:
        result = run_best_of_n(source, pool_list, config.objectives(), config.batch_size)
    info = {"skipped": dict(report.skipped), "source": report.source, "unfinished_samples": unfinished}
    if output_dir is None or not is_main_process():  # every process has the result; the main one writes it
        return summarize_best_of_n(result, **info)
    mark_output_dir(output_dir, "bon")
    if config.feedback is not None:
        source.save(source.state_path or Path(output_dir) / "bandit_state.safetensors")
    return write_best_of_n(result, output_dir, f"best-of-n on {Path(report.source).name}", **info)


def set_gold_from(source, pools: Sequence["Pool"], batch_size: int = 16) -> None:
    """Make another reward source the gold: each pool's gold becomes its rewards."""
    for pool, scores in zip(pools, score_pools(source, pools, batch_size)[0]):
        pool.gold = np.asarray(scores.mean, dtype=np.float64)


def summarize_best_of_n(result: dict[str, Any], **info: Any) -> dict[str, Any]:
    """run_best_of_n's result without the per-pool records (their count instead), plus `info`."""
    return result | {"pools": len(result["pools"])} | info


def write_best_of_n(result: dict[str, Any], output_dir: str | Path, title: str, **info: Any) -> dict[str, Any]:
    """Write run_best_of_n's result: results.jsonl (one record per pool), summary.json (the curves, plus
    `info`) and best_of_n.png. Returns the summary."""
    output_dir = Path(output_dir)
    write_text(output_dir / "results.jsonl", "".join(json.dumps(record) + "\n" for record in result["pools"]))
    summary = summarize_best_of_n(result, **info)
    write_json(output_dir / "summary.json", summary)
    plot_best_of_n(summary, output_dir / "best_of_n.png", title=title)
    return summary


def format_best_of_n(summary: dict[str, Any]) -> str:
    """A table of the curves at n = 1, 2, 4, … and the largest n: one line per objective and reward kind."""
    ns = summary["n"]
    shown = sorted({1, 2, 4, 8, 16, 32, 64, len(ns)} & set(ns))
    width = max([len("objective")] + [len(name) for name in summary["curves"]]) + 2
    lines = [f"{'objective':<{width}}{'reward':<8}" + "".join(f"{'n=' + str(k):>9}" for k in shown)]
    for name, curve in summary["curves"].items():
        for kind, values in curve.items():
            lines.append(f"{name:<{width}}{kind:<8}" + "".join(f"{values[k - 1]:>9.3f}" for k in shown))
    return "\n".join(lines)


def plot_best_of_n(result: dict[str, Any], path: str | Path, title: str = "best-of-n") -> None:  # pragma: no mutate block (a figure)
    """A grid of gold (when known) and proxy reward of best-of-n, against n (log scale) and against KL,
    one line per curve that has the reward kind."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = [k for k in ("gold", "proxy") if any(k in curve for curve in result["curves"].values())]
    fig, axes = plt.subplots(len(kinds), 2, figsize=(11, 3.8 * len(kinds)), squeeze=False)
    for row, kind in enumerate(kinds):
        for col, (x, label) in enumerate(((result["n"], "n"), (result["kl"], "KL(best-of-n ‖ policy), nats"))):
            axis = axes[row][col]
            for name, curve in result["curves"].items():
                if kind not in curve:
                    continue
                axis.plot(x, curve[kind], marker="." if len(x) < 40 else None, label=name)
            axis.set_xlabel(label)
            axis.set_ylabel(f"{kind} reward of best-of-n")
            axis.grid(alpha=0.3)
            if col == 0:
                axis.set_xscale("log")
    axes[0][1].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as temporary:
        fig.savefig(temporary, dpi=110, format="png")
    plt.close(fig)
