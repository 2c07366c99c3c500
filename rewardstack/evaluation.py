"""Evaluation of a reward model on preference data: overall and per subset, the Laplace predictive when
the model has a posterior, and how well reward std flags out-of-distribution data."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .bayes import pair_moments, probit_logit
from .data.encode import EncodedPairs, encode_pairs
from .comparisons import AB_KEYS, as_pairs, bootstrap_interval, comparison_metrics, load_comparisons, per_row_records, rewardbench_v1, rewardbench_v2, score_comparisons
from .config import EVAL_FORMATS
from .data.load import Columns, PreferencePair, named_data
from .distributed import arrays_across_processes, score_across_processes
from .errors import UserError
from .files import atomic_path
from .metrics import auroc, expected_calibration_error, logit_metrics, pairwise_metrics, preference_probability, tie_half_correct
from .model import RewardModel


def score_pairs(model: RewardModel, pairs: EncodedPairs, batch_size: int = 16, ref_cache_dir: str | None = None) -> dict[str, np.ndarray]:
    """Per-pair arrays: `chosen`, `rejected` (the model's reward: the head's, or the implicit one for dpo);
    for haf, `implicit_chosen`, `implicit_rejected` = β·(log π − log π_ref), the adapter-disabled backbone
    as reference (log π_ref kept in `ref_cache_dir` when given); with a posterior, `var_chosen`,
    `var_rejected` and `var_delta` = Var[r_c − r_r]. `batch_size` counts sequences."""
    sequences = pairs.chosen + pairs.rejected
    n = len(pairs)
    logps = None
    if model.posterior is not None:
        scores = {k: v[:, 0] if v.ndim == 2 else v for k, v in pair_moments(model, pairs, max(batch_size // 2, 1)).items()}
    else:
        if model.config.objective == "haf":  # head reward and log π from one backbone pass
            rewards, logps = model.head_rewards_and_logprobs(sequences, batch_size)
        else:
            rewards = model.rewards(sequences, batch_size, ref_cache_dir)
        scores = {"chosen": rewards[:n], "rejected": rewards[n:]}
    if model.config.objective == "haf":  # the LM head was trained too: its implicit reward is reported as well
        implicit = model.implicit_rewards(sequences, batch_size, logps=logps, ref_cache_dir=ref_cache_dir)
        scores.update(implicit_chosen=implicit[:n], implicit_rejected=implicit[n:])
    return scores


def response_stds(scores: dict[str, np.ndarray]) -> np.ndarray:
    """Reward std of every chosen then every rejected response of score_pairs' arrays."""
    return np.sqrt(np.concatenate([scores["var_chosen"], scores["var_rejected"]]))


def source_pair_scores(source, pairs: Sequence[PreferencePair], batch_size: int = 16) -> tuple[dict[str, np.ndarray], int]:
    """score_pairs for any reward source: (`chosen`, `rejected` and, when the source has stds, `var_chosen`,
    `var_rejected`), and the count of truncated rows. Without Jacobians there is no Var[Δ]."""
    prompts = [pair.prompt for pair in pairs] * 2
    scores = score_across_processes(source, prompts, [p.chosen for p in pairs] + [p.rejected for p in pairs], batch_size)
    n = len(pairs)
    result = {"chosen": scores.mean[:n], "rejected": scores.mean[n:]}
    if scores.std is not None:
        result.update(var_chosen=np.square(scores.std[:n]), var_rejected=np.square(scores.std[n:]))
    return result, scores.truncated


def pair_metrics(scores: dict[str, np.ndarray], subsets: Sequence[str | None], truncated: int) -> dict[str, Any]:
    """Metrics of score_pairs' arrays: pairwise_metrics of the reward (with 95 % bootstrap intervals of
    both accuracies), `implicit_reward` and `laplace`
    (the probit predictive σ(μ_Δ/√(1 + π Var[Δ]/8)), with `mean_std` of the rewards) when present, and a
    breakdown by the pairs' `subsets`; `truncated` is reported as given."""
    result: dict[str, Any] = pairwise_metrics(scores["chosen"], scores["rejected"])
    delta = scores["chosen"] - scores["rejected"]
    result["accuracy_ci"] = bootstrap_interval(tie_half_correct(delta))
    result["strict_accuracy_ci"] = bootstrap_interval(delta > 0)
    result["truncated"] = truncated
    if "implicit_chosen" in scores:
        result["implicit_reward"] = pairwise_metrics(scores["implicit_chosen"], scores["implicit_rejected"])
    if "var_delta" in scores:
        logits = probit_logit(scores["chosen"] - scores["rejected"], scores["var_delta"])
        result["laplace"] = {"pairs": len(subsets), "mean_margin": result["mean_margin"], **logit_metrics(logits),
                             "mean_std": float(response_stds(scores).mean())}
    groups: dict[str, list[int]] = defaultdict(list)
    for i, subset in enumerate(subsets):
        if subset is not None:
            groups[subset].append(i)
    if groups:
        result["subsets"] = {
            name: pairwise_metrics(scores["chosen"][idx], scores["rejected"][idx]) for name, idx in sorted(groups.items())
        }
    return result


def evaluate_encoded(model: RewardModel, pairs: EncodedPairs, batch_size: int = 16, ref_cache_dir: str | None = None) -> dict[str, Any]:
    """pair_metrics(score_pairs(...)) of encoded pairs."""
    return pair_metrics(score_pairs(model, pairs, batch_size, ref_cache_dir), pairs.subset, pairs.truncated)


def evaluate(
    model,
    data: Any,
    columns: Columns | None = None,
    skip_invalid: bool = False,
    batch_size: int = 16,
    ref_cache_dir: str | None = None,
    ood_data: Any = None,
    format: str = "auto",  # noqa: A002 (the option's name)
    ab_keys: tuple[str, str, str] = AB_KEYS,
    per_row: bool = False,
) -> dict[str, dict[str, Any]]:
    """Metrics per data set of `model` (a RewardModel or any reward source). `data` is {name: data} or
    anything `named_data` takes (paths, datasets, DataFrames, lists of rows). Pair rows get pair_metrics
    (accuracy with ties ½ and strict, with 95 % bootstrap intervals, margin, ECE, Brier, NLL, per subset);
    rows with several responses or A/B labels get comparisons.comparison_metrics. `format`:
    rewardbench adds RewardBench v1 section scores, rewardbench2 RewardBench 2 subset scores
    (comparisons.py). Each set of `ood_data` (needs rewards with a std) gets `ood_auroc`: how well reward
    std separates its responses from those of `data` (1 = fully). With `per_row`, each set's
    `per_row` holds one record per row (comparisons.per_row_records)."""
    if format not in EVAL_FORMATS:
        raise UserError(f"eval: format must be one of {', '.join(EVAL_FORMATS)}, not {format!r}")
    sets, ood_sets = named_data(data), named_data(ood_data) if ood_data is not None else {}
    if ood_sets and isinstance(model, RewardModel) and model.posterior is None:
        raise UserError("eval: --ood-data needs a model with a Laplace posterior (run `rewardstack laplace` first)")
    results, stds = {}, {}
    for name, source in [*sets.items(), *ood_sets.items()]:
        rows, report = load_comparisons(source, columns, skip_invalid, ab_keys)
        metrics, rewards, row_stds = _evaluate_rows(model, rows, format, batch_size, ref_cache_dir)
        metrics["skipped"] = dict(report.skipped)
        metrics["rows"] = report.rows
        if per_row:
            metrics["per_row"] = per_row_records(name, rows, rewards, row_stds)
        results[name] = metrics
        if row_stds[0] is not None:
            stds[name] = np.concatenate([np.concatenate(pair) for pair in row_stds])
    if ood_sets:
        if not stds:
            raise UserError("eval: --ood-data needs rewards with a std (a model with a posterior, or an ensemble)")
        in_distribution = np.concatenate([stds[name] for name in sets])
        for name in ood_sets:
            results[name]["ood_auroc"] = auroc(in_distribution, stds[name])
    return results


def _evaluate_rows(model, rows: list, format: str, batch_size: int, ref_cache_dir: str | None) -> tuple[dict[str, Any], list, list]:  # noqa: A002
    """Metrics of one data set's rows, their rewards per row (chosen, rejected) and stds per row (or None)."""
    pairs = as_pairs(rows) if format != "rewardbench2" else None
    if pairs is None:
        rewards, row_stds, truncated = score_comparisons(model, rows, batch_size)
        metrics = {**comparison_metrics(rows, rewards), "truncated": truncated}
        if format == "rewardbench":
            metrics["rewardbench"] = rewardbench_v1(rows, rewards)
        elif format == "rewardbench2":
            metrics["rewardbench2"] = rewardbench_v2(rows, rewards)
        return metrics, rewards, row_stds
    if isinstance(model, RewardModel):
        encoded = encode_pairs(model.encoder, pairs)
        scores = arrays_across_processes(len(pairs), lambda mine: score_pairs(model, encoded.take(mine), batch_size, ref_cache_dir))
        truncated = encoded.truncated
    else:
        scores, truncated = source_pair_scores(model, pairs, batch_size)
    metrics = pair_metrics(scores, [pair.subset for pair in pairs], truncated)
    rewards = [(np.array([c]), np.array([r])) for c, r in zip(scores["chosen"], scores["rejected"])]
    if format == "rewardbench":
        metrics["rewardbench"] = rewardbench_v1(rows, rewards)
    if "var_chosen" in scores:
        row_stds = [(np.sqrt([vc]), np.sqrt([vr])) for vc, vr in zip(scores["var_chosen"], scores["var_rejected"])]
    else:
        row_stds = [None] * len(rows)
    return metrics, rewards, row_stds


def format_table(results: dict[str, dict[str, Any]]) -> str:
    """Plain-text tables: pair data sets (acc counts a tie ½, strict counts it 0; the interval is the
    strict accuracy's 95 % bootstrap), then data sets of rows with several responses or A/B labels, then
    RewardBench scores."""
    pairs = {name: m for name, m in results.items() if "comparisons" not in m}
    others = {name: m for name, m in results.items() if "comparisons" in m}
    lines = _pair_table(pairs) if pairs else []
    if others:
        lines += ([""] if lines else []) + _comparison_table(others)
    for name, m in results.items():
        for key, title in (("rewardbench", "RewardBench v1"), ("rewardbench2", "RewardBench 2")):
            if key in m:
                bench = m[key]
                lines += ["", f"{title} on {name} ({bench['accuracy_convention']}): overall {bench['overall']:.4f}"]
                lines += [f"  {section:<24} {value:.4f}" for section, value in bench.get("sections", {}).items()]
                lines += [f"    {subset:<24} {value:.4f}" for subset, value in bench["subsets"].items()]
    return "\n".join(lines)


def _pair_table(results: dict[str, dict[str, Any]]) -> list[str]:
    header = (f"{'data':<40} {'pairs':>6} {'acc':>6} {'strict':>6} {'strict 95% CI':>14} {'margin':>7} {'ece':>6} {'brier':>6} "
              f"{'nll':>6} {'trunc':>6} {'skip':>5}")
    lines = [header, "-" * len(header)]

    def line(name: str, m: dict, truncated: Any = "", skipped: Any = "") -> str:
        ci = m.get("strict_accuracy_ci")
        shown = f"{ci[0]:.3f}–{ci[1]:.3f}" if ci else ""
        return (
            f"{name[-40:]:<40} {m['pairs']:>6} {m['accuracy']:>6.3f} {m['strict_accuracy']:>6.3f} {shown:>14} {m['mean_margin']:>7.3f} "
            f"{m['ece']:>6.3f} {m['brier']:>6.3f} {m['nll']:>6.3f} {truncated!s:>6} {skipped!s:>5}"
        )

    for source, m in results.items():
        lines.append(line(source, m, m.get("truncated", ""), sum(m.get("skipped", {}).values())))
        if "implicit_reward" in m:
            lines.append(line("  implicit reward (LM head)", m["implicit_reward"]))
        if "laplace" in m:
            lines.append(line(f"  laplace predictive (mean std {m['laplace']['mean_std']:.3f})", m["laplace"]))
        if "ood_auroc" in m:
            lines.append(f"  out-of-distribution AUROC of reward std: {m['ood_auroc']:.3f}")
        for subset, sm in m.get("subsets", {}).items():
            lines.append(line(f"  {subset}", sm))
    return lines


def _comparison_table(results: dict[str, dict[str, Any]]) -> list[str]:
    header = f"{'data (rows with several responses or A/B labels)':<50} {'rows':>6} {'all':>6} {'all½':>6} {'all 95% CI':>12} {'mean':>6} {'mean½':>6}"
    lines = [header, "-" * len(header)]
    for source, m in results.items():
        ci = m["all_ci"]
        lines.append(f"{source[-50:]:<50} {m['compared_rows']:>6} {m['all']:>6.3f} {m['all_tie_half']:>6.3f} {f'{ci[0]:.3f}–{ci[1]:.3f}':>12} "
                     f"{m['mean']:>6.3f} {m['mean_tie_half']:>6.3f}")
        if "styles" in m:
            lines.append("  styles: " + ", ".join(f"{k} {v:.3f}" for k, v in m["styles"].items()))
        if "tie_rows" in m:
            lines.append(f"  tie-labelled rows (not in the accuracies): {m['tie_rows']['rows']}, mean |r_A − r_B| {m['tie_rows']['mean_abs_margin']:.3f}")
        for subset, sm in m.get("subsets", {}).items():
            lines.append(f"{'  ' + subset:<50} {sm['rows']:>6} {sm['all']:>6.3f} {sm['all_tie_half']:>6.3f} {'':>12} {sm['mean']:>6.3f} {sm['mean_tie_half']:>6.3f}")
    return lines


def plot_evaluation(results: dict[str, dict[str, Any]], directory: str | Path) -> list[Path]:
    """PNGs of an evaluation run with per-row records (evaluate(..., per_row=True)): reliability.png, the
    reliability diagram of P(chosen ≻ rejected) = σ(r_c − r_r) over pair rows (both orientations, 10
    bins, as the ECE); subsets.png, strict accuracy per data set and subset with 95 % bootstrap
    intervals; and, when rewards have a std, std_vs_error.png: the strict error rate of pair rows by
    quintile of √(σ_c² + σ_r²). Returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [r for m in results.values() for r in m.get("per_row", [])]
    if not records:
        raise UserError("eval: --plot needs the per-row records (evaluate(..., per_row=True))")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    pairs = [r for r in records if len(r["chosen_rewards"]) == 1 and len(r["rejected_rewards"]) == 1 and not r["tie_label"]]
    written = []
    for name, draw in (("reliability.png", _reliability), ("subsets.png", _subset_accuracy), ("std_vs_error.png", _std_vs_error)):
        fig, axis = plt.subplots(figsize=(6.5, 4.5))
        if not draw(axis, records, pairs):
            plt.close(fig)
            continue
        fig.tight_layout()
        with atomic_path(directory / name) as temporary:
            fig.savefig(temporary, dpi=110, format="png")
        plt.close(fig)
        written.append(directory / name)
    return written


def _reliability(axis, records: list[dict], pairs: list[dict]) -> bool:
    if not pairs:
        return False
    p = preference_probability(np.array([r["chosen_rewards"][0] for r in pairs]), np.array([r["rejected_rewards"][0] for r in pairs]))
    probs, outcomes = np.concatenate([p, 1 - p]), np.concatenate([np.ones_like(p), np.zeros_like(p)])
    index = np.minimum((probs * 10).astype(int), 9)
    shown = [(probs[index == b].mean(), outcomes[index == b].mean(), int((index == b).sum())) for b in range(10) if (index == b).any()]
    axis.plot([0, 1], [0, 1], color="grey", linestyle="--", label="calibrated")
    axis.plot([s[0] for s in shown], [s[1] for s in shown], marker="o", label=f"model (ECE {expected_calibration_error(p):.3f})")
    axis.set_xlabel("predicted P(response ≻ other) = σ(Δr)")
    axis.set_ylabel("observed frequency")
    axis.set_title(f"reliability over {len(pairs)} pairs (both orientations)")
    axis.legend(fontsize=8)
    return True


def _subset_accuracy(axis, records: list[dict], pairs: list[dict]) -> bool:
    groups: dict[str, list[float]] = defaultdict(list)
    for r in records:
        if not r["tie_label"]:
            groups[f"{r['data']}: {r['subset']}" if r["subset"] is not None else r["data"]].append(r["all"])
    names = sorted(groups)
    means = [np.mean(groups[n]) for n in names]
    intervals = [bootstrap_interval(groups[n]) for n in names]
    errors = np.array([[m - lo for m, (lo, _) in zip(means, intervals)], [hi - m for m, (_, hi) in zip(means, intervals)]])
    axis.barh(range(len(names)), means, xerr=errors, color="tab:blue", alpha=0.7, capsize=3)
    axis.set_yticks(range(len(names)), [n[-40:] for n in names], fontsize=7)
    axis.set_xlim(0, 1)
    axis.set_xlabel("strict accuracy (every chosen above every rejected), 95 % bootstrap interval")
    return True


def _std_vs_error(axis, records: list[dict], pairs: list[dict]) -> bool:
    with_std = [r for r in pairs if "chosen_stds" in r]
    if len(with_std) < 5:
        return False
    spread = np.array([math.hypot(r["chosen_stds"][0], r["rejected_stds"][0]) for r in with_std])
    error = np.array([1.0 - r["all"] for r in with_std])
    edges = np.quantile(spread, np.linspace(0, 1, 6))
    index = np.clip(np.searchsorted(edges, spread, side="right") - 1, 0, 4)
    centres = [spread[index == b].mean() for b in range(5) if (index == b).any()]
    rates = [error[index == b].mean() for b in range(5) if (index == b).any()]
    axis.plot(centres, rates, marker="o")
    axis.set_xlabel("reward std of the pair, √(σ_c² + σ_r²) (quintile means)")
    axis.set_ylabel("error rate (strict)")
    axis.set_title(f"reward std against error, {len(with_std)} pairs")
    return True
