"""What every reward source returns, the protocol it follows, and the one JSON form of its scores."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from .data.load import Message


@dataclass
class RewardScores:
    """Rewards for a list of (prompt, response) rows.

    mean: reward per row; std: its standard deviation (None when the source has no uncertainty);
    parts: named component rewards (an ensemble's members, a hierarchy's holistic and aspect rewards);
    arm: per row, the index of the member a bandit chose (None for other sources);
    truncated: rows cut to fit the source's maximum length."""

    mean: np.ndarray
    std: np.ndarray | None = None
    parts: dict[str, np.ndarray] = field(default_factory=dict)
    arm: np.ndarray | None = None
    truncated: int = 0

    def rows(self, rows: slice, truncated: int = 0) -> RewardScores:
        """The scores of some rows; `truncated` is theirs to give (a count cannot be split by rows)."""
        return RewardScores(mean=self.mean[rows], std=None if self.std is None else self.std[rows],
                            parts={name: np.asarray(values)[rows] for name, values in self.parts.items()},
                            arm=None if self.arm is None else self.arm[rows], truncated=truncated)

    def to_json(self) -> dict[str, Any]:
        """{"rewards": [...], "std": [...] or null, "parts": {name: [...]}, "arm": [...] or null,
        "truncated": n}: the server's answer, which `from_json` reads back."""
        return {"rewards": self.mean.tolist(), "std": None if self.std is None else self.std.tolist(),
                "parts": {name: np.asarray(values).tolist() for name, values in self.parts.items()},
                "arm": None if self.arm is None else self.arm.tolist(), "truncated": self.truncated}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RewardScores:
        """The inverse of `to_json` (rewards checked by the caller)."""
        return cls(mean=np.asarray(data["rewards"], dtype=np.float64), std=None if data.get("std") is None else np.asarray(data["std"], dtype=np.float64),
                   parts={name: np.asarray(values, dtype=np.float64) for name, values in (data.get("parts") or {}).items()},
                   arm=None if data.get("arm") is None else np.asarray(data["arm"], dtype=np.int64), truncated=int(data.get("truncated", 0)))

    def row_fields(self, rows: int | slice) -> dict[str, Any]:
        """The fields a scored row (int) or pool of rows (slice) gets in output files: `reward`, and
        `reward_std`, `reward_parts`, `arm` when the source gives them."""
        def plain(values):
            return np.asarray(values)[rows].tolist()

        fields: dict[str, Any] = {"reward": plain(self.mean)}
        if self.std is not None:
            fields["reward_std"] = plain(self.std)
        if self.parts:
            fields["reward_parts"] = {name: plain(values) for name, values in self.parts.items()}
        if self.arm is not None:
            fields["arm"] = plain(self.arm)
        return fields


class RewardSource(Protocol):
    """Anything that scores rows: models, rules, remote servers, ensembles, hierarchies, bandits."""

    def score(self, prompts: Sequence[str | Sequence[Message]], responses: Sequence[str], batch_size: int = 16) -> RewardScores: ...
