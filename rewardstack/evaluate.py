"""Evaluation of a reward model on preference data: overall and per subset."""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Sequence

from .data.encode import EncodedPairs, encode_pairs
from .data.load import Columns, load_preferences
from .metrics import pairwise_metrics
from .model import RewardModel


def evaluate_encoded(model: RewardModel, pairs: EncodedPairs, batch_size: int = 16) -> dict[str, Any]:
    """Pairwise metrics of `model` on encoded pairs, with a breakdown by subset when pairs carry one.
    The reward is the head's (bt, haf) or the implicit one (dpo); a haf model also gets `implicit_reward`
    metrics, β·(log π − log π_ref) with the adapter-disabled backbone as reference."""
    sequences = pairs.chosen + pairs.rejected
    implicit = None
    if model.config.objective == "haf":  # the LM head was trained too: report its implicit reward as well
        rewards, logps = model.head_rewards_and_logprobs(sequences, batch_size)
        implicit = model.implicit_rewards(sequences, batch_size, logps=logps)
    else:
        rewards = model.rewards(sequences, batch_size)
    r_chosen, r_rejected = rewards[: len(pairs)], rewards[len(pairs) :]
    result: dict[str, Any] = pairwise_metrics(r_chosen, r_rejected)
    result["truncated"] = pairs.truncated
    if implicit is not None:
        result["implicit_reward"] = pairwise_metrics(implicit[: len(pairs)], implicit[len(pairs) :])
    groups: dict[str, list[int]] = defaultdict(list)
    for i, subset in enumerate(pairs.subset):
        if subset is not None:
            groups[subset].append(i)
    if groups:
        result["subsets"] = {
            name: pairwise_metrics(r_chosen[idx], r_rejected[idx]) for name, idx in sorted(groups.items())
        }
    return result


def evaluate(
    model: RewardModel,
    sources: Sequence[str],
    columns: Columns | None = None,
    skip_invalid: bool = False,
    batch_size: int = 16,
) -> dict[str, dict[str, Any]]:
    """Metrics per data source: accuracy (ties ½), mean margin, ECE, Brier, NLL, and counts of
    pairs, truncated pairs and skipped rows."""
    results = {}
    for source in sources:
        pairs, report = load_preferences(source, columns, skip_invalid)
        metrics = evaluate_encoded(model, encode_pairs(model.encoder, pairs), batch_size)
        metrics["skipped"] = dict(report.skipped)
        metrics["rows"] = report.rows
        results[str(source)] = metrics
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
        for subset, sm in m.get("subsets", {}).items():
            lines.append(line(f"  {subset}", sm))
    return "\n".join(lines)
