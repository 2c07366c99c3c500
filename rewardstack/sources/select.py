"""ALaRM's aspect selection: keep the aspect rewards that agree with the holistic reward.

For each prompt two responses are compared by the holistic source and by every candidate aspect. Over the
prompts where neither the holistic nor the aspect scores tie, the inconsistency rate is the share where
the aspect prefers the other response than the holistic source; the win rate is the share of all prompts
where the aspect prefers the holistic source's choice (ties ½).
"""

from __future__ import annotations

import copy
from typing import Any, Sequence

import numpy as np

from ..errors import UserError
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
