"""Reward sources: anything with `score(prompts, responses) -> RewardScores`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence

import numpy as np

from ..data.load import Message


@dataclass
class RewardScores:
    """Rewards for a list of (prompt, response) rows.

    mean: reward per row; std: its standard deviation (None when the source has no uncertainty);
    parts: named per-aspect rewards; truncated: rows cut to fit the source's maximum length."""

    mean: np.ndarray
    std: np.ndarray | None = None
    parts: dict[str, np.ndarray] = field(default_factory=dict)
    truncated: int = 0

    def rows(self, rows: slice, truncated: int = 0) -> "RewardScores":
        """The scores of some rows; `truncated` is theirs to give (a count cannot be split by rows)."""
        return RewardScores(mean=self.mean[rows], std=None if self.std is None else self.std[rows],
                            parts={name: np.asarray(values)[rows] for name, values in self.parts.items()}, truncated=truncated)


class RewardSource(Protocol):
    def score(self, prompts: Sequence[str | Sequence[Message]], responses: Sequence[str], batch_size: int = 16) -> RewardScores: ...


from .combine import Ensemble, Hierarchical, Normalized  # noqa: E402  (the kinds use RewardScores above)
from .remote import Remote  # noqa: E402
from .rules import Rule  # noqa: E402
from .tree import build_source, calibrate_tree, load_source  # noqa: E402

__all__ = ["RewardScores", "RewardSource", "Rule", "Remote", "Normalized", "Ensemble", "Hierarchical", "build_source", "calibrate_tree", "load_source"]
