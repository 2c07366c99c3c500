"""Evaluation of a reward model on preference data: overall and per subset, the Laplace predictive when
the model has a posterior, and how well reward std flags out-of-distribution data."""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Sequence

import numpy as np

from .bayes import pair_moments, probit_logit
from .data.encode import EncodedPairs, encode_pairs
from .data.load import Columns, PreferencePair, load_preferences, named_data
from .errors import UserError
from .metrics import auroc, logit_metrics, pairwise_metrics
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
    scores = source.score(prompts, [p.chosen for p in pairs] + [p.rejected for p in pairs], batch_size=batch_size)
    n = len(pairs)
    result = {"chosen": scores.mean[:n], "rejected": scores.mean[n:]}
    if scores.std is not None:
        result.update(var_chosen=np.square(scores.std[:n]), var_rejected=np.square(scores.std[n:]))
    return result, scores.truncated


def pair_metrics(scores: dict[str, np.ndarray], subsets: Sequence[str | None], truncated: int) -> dict[str, Any]:
    """Metrics of score_pairs' arrays: pairwise_metrics of the reward, `implicit_reward` and `laplace`
    (the probit predictive σ(μ_Δ/√(1 + π Var[Δ]/8)), with `mean_std` of the rewards) when present, and a
    breakdown by the pairs' `subsets`; `truncated` is reported as given."""
    result: dict[str, Any] = pairwise_metrics(scores["chosen"], scores["rejected"])
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
) -> dict[str, dict[str, Any]]:
    """Metrics per data set of `model` (a RewardModel or any reward source): accuracy (ties ½), mean
    margin, ECE, Brier, NLL, and counts of pairs, truncated pairs and skipped rows. `data` is
    {name: data} or anything `named_data` takes (paths, datasets, DataFrames, lists of rows). Each set
    of `ood_data` (needs rewards with a std) is evaluated too and gets `ood_auroc`: how well reward std
    separates its responses from those of `data` (1 = fully)."""
    sets, ood_sets = named_data(data), named_data(ood_data) if ood_data is not None else {}
    if ood_sets and isinstance(model, RewardModel) and model.posterior is None:
        raise UserError("eval: --ood-data needs a model with a Laplace posterior (run `rewardstack laplace` first)")
    results, stds = {}, {}
    for name, source in [*sets.items(), *ood_sets.items()]:
        pairs, report = load_preferences(source, columns, skip_invalid)
        if isinstance(model, RewardModel):
            encoded = encode_pairs(model.encoder, pairs)
            scores, truncated = score_pairs(model, encoded, batch_size, ref_cache_dir), encoded.truncated
        else:
            scores, truncated = source_pair_scores(model, pairs, batch_size)
        metrics = pair_metrics(scores, [pair.subset for pair in pairs], truncated)
        metrics["skipped"] = dict(report.skipped)
        metrics["rows"] = report.rows
        results[name] = metrics
        if "var_chosen" in scores:
            stds[name] = response_stds(scores)
    if ood_sets:
        if not stds:
            raise UserError("eval: --ood-data needs rewards with a std (a model with a posterior, or an ensemble)")
        in_distribution = np.concatenate([stds[name] for name in sets])
        for name in ood_sets:
            results[name]["ood_auroc"] = auroc(in_distribution, stds[name])
    return results


def format_table(results: dict[str, dict[str, Any]]) -> str:
    """A plain-text table: one line per data source and per subset."""
    header = f"{'data':<44} {'pairs':>6} {'acc':>6} {'margin':>7} {'ece':>6} {'brier':>6} {'nll':>6} {'trunc':>6} {'skip':>5}"
    lines = [header, "-" * len(header)]

    def line(name: str, m: dict, truncated: Any = "", skipped: Any = "") -> str:
        return (
            f"{name[-44:]:<44} {m['pairs']:>6} {m['accuracy']:>6.3f} {m['mean_margin']:>7.3f} "
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
    return "\n".join(lines)
