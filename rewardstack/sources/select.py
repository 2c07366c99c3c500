"""ALaRM's aspect selection: keep the aspect rewards that agree with the holistic reward.

For each prompt two responses are compared by the holistic source and by every candidate aspect. Over the
prompts where neither the holistic nor the aspect scores tie, the inconsistency rate is the share where
the aspect prefers the other response than the holistic source; the win rate is the share of all prompts
where the aspect prefers the holistic source's choice (ties ½).
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..errors import UserError, require
from ..options import option
from .tree import build_source


def aspect_consistency(holistic: np.ndarray, aspect: np.ndarray) -> dict[str, float]:
    """holistic, aspect: (prompts, 2) rewards of the two responses. Returns `compared` (pairs without a
    tie in either), `inconsistency` = #(sign(Δa) ≠ sign(Δh)) / compared (NaN when nothing is compared),
    and `win_rate` = mean over all pairs of 1[sign(Δa) = sign(Δh) ≠ 0] + ½·1[Δa = 0 or Δh = 0]."""
    dh = np.sign(np.asarray(holistic, dtype=np.float64) @ [1.0, -1.0])
    da = np.sign(np.asarray(aspect, dtype=np.float64) @ [1.0, -1.0])
    compared = (dh != 0) & (da != 0)
    disagree = compared & (dh != da)
    win = np.where(compared, (dh == da).astype(np.float64), 0.5)
    n = int(compared.sum())
    return {"compared": n, "inconsistency": float(disagree.sum() / n) if n else float("nan"), "win_rate": float(win.mean())}


@dataclass
class SelectAspectsConfig:
    """Options of `rewardstack compose select-aspects`."""

    keep: int | None = option(None, "Keep at most this many aspects")
    max_inconsistency: float = option(0.5, "Keep aspects whose inconsistency rate is at most this")
    policy: str = option("smollm2-135m", "Policy that answers the prompts (with prompts instead of pools)")
    temperature: float = option(0.7, "Temperature of the sampled response (the other one is greedy)")
    max_new_tokens: int = option(256, "Tokens per response at most")
    max_pools: int | None = option(None, "Use only the first N pools or prompts")
    seed: int = option(0, "Seed of the drawn pairs and of sampling")
    batch_size: int = option(16, "Sequences per forward pass")
    skip_invalid: bool = option(False, "Count and skip invalid rows instead of stopping at the first")

    def __post_init__(self) -> None:
        require(self, "max_inconsistency", 0 <= self.max_inconsistency <= 1, "in [0, 1]")
        for name in ("keep", "max_pools"):
            if getattr(self, name) is not None:
                require(self, name, getattr(self, name) >= 1, "at least 1")
        require(self, "max_new_tokens", self.max_new_tokens >= 1, "at least 1")
        require(self, "batch_size", self.batch_size >= 1, "at least 1")


def aspect_pairs(config: SelectAspectsConfig, pools: Any = None, prompts: Any = None) -> tuple[list, list[str], list[str]]:
    """Two responses per prompt to compare aspects on: from exactly one of `pools` (two distinct
    responses of each pool with at least two, drawn with `config.seed`) or `prompts` (the policy's
    greedy response and one sampled at `config.temperature`). Returns (prompts, first, second)."""
    from ..data.pools import load_pools, load_prompts

    if (pools is None) == (prompts is None):
        raise UserError("select-aspects: give exactly one of --pools and --prompts")
    if pools is not None:
        pool_list = [p for p in load_pools(pools, config.skip_invalid)[0] if len(p.responses) >= 2][: config.max_pools]
        rng = random.Random(config.seed)
        drawn = [rng.sample(range(len(p.responses)), 2) for p in pool_list]
        return [p.prompt for p in pool_list], [p.responses[i] for p, (i, _) in zip(pool_list, drawn)], [p.responses[j] for p, (_, j) in zip(pool_list, drawn)]
    from ..backbones import load_backbone
    from ..sampling import SamplingConfig, sample_responses

    prompt_list = [row.prompt for row in load_prompts(prompts, skip_invalid=config.skip_invalid)[0][: config.max_pools]]
    model, tokenizer = load_backbone(config.policy)
    greedy = SamplingConfig(n=1, temperature=0, max_new_tokens=config.max_new_tokens)
    sampled = SamplingConfig(n=1, temperature=config.temperature, max_new_tokens=config.max_new_tokens, seed=config.seed)
    first, second = (sample_responses(model, tokenizer, prompt_list, sampling).responses for sampling in (greedy, sampled))
    return prompt_list, [r[0] for r in first], [r[0] for r in second]


def select_aspects(
    tree: dict[str, Any], base_dir, prompts: Sequence, first: Sequence[str], second: Sequence[str],
    keep: int | None = None, max_inconsistency: float = 0.5, batch_size: int = 16, allowed_modules: Sequence[str] = (),
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Score both responses of every prompt with the hierarchical `tree`'s holistic source and each of its
    aspects. Returns (one row per aspect: name, compared, inconsistency, win_rate, kept; sorted from the
    most consistent) and a copy of the tree keeping the aspects with inconsistency ≤ `max_inconsistency`,
    at most `keep` of them."""
    if tree.get("kind") != "hierarchical" or not tree.get("aspects"):
        raise UserError("select-aspects: the config must be a hierarchical source with candidate `aspects`")
    if not (len(prompts) == len(first) == len(second)) or not prompts:
        raise UserError("select-aspects: needs two responses for each of at least one prompt")

    def both(node) -> np.ndarray:
        scores = build_source(node, base_dir, allowed_modules=allowed_modules).score(list(prompts) * 2, list(first) + list(second), batch_size=batch_size).mean
        return np.stack([scores[: len(prompts)], scores[len(prompts) :]], axis=1)

    holistic = both(tree["holistic"])
    rows = []
    for aspect in tree["aspects"]:
        rows.append({"name": aspect["name"], **aspect_consistency(holistic, both(aspect["source"]))})
    rows.sort(key=lambda r: (np.nan_to_num(r["inconsistency"], nan=1.0), -r["win_rate"]))
    kept = [r["name"] for r in rows if r["inconsistency"] <= max_inconsistency][:keep]
    for row in rows:
        row["kept"] = row["name"] in kept
    selected = copy.deepcopy(tree)
    selected["aspects"] = [a for a in tree["aspects"] if a["name"] in kept]
    if not selected["aspects"]:
        selected["mode"] = "holistic"
    return rows, selected
