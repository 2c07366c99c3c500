"""What every reward source returns, the protocol it follows, and the one JSON form of its scores."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .data.load import Message
from .errors import UserError
from .files import read_json, write_json


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


def write_scored_rows(source: RewardSource, rows: Sequence[dict], prompts: Sequence, responses: Sequence[str], output: str | Path,
                      batch_size: int = 16, chunk_rows: int = 4096, resume: bool = False, run: dict | None = None) -> int:
    """Score rows `chunk_rows` at a time and write each input row with its reward fields to `output`
    (JSON lines, input order). Finished chunks go to a hidden `.OUTPUT.partial` file beside it, with the
    count of rows and bytes done in `.OUTPUT.progress.json`; `output` appears only when all rows are done.
    A run that was killed continues with `resume` from its last finished chunk, nothing scored twice or
    lost; `run` (the reward, input and options) must be what the interrupted run had. Returns the rows
    truncated."""
    from .distributed import is_main_process, score_across_processes, wait_for_everyone

    output = Path(output)
    partial, progress = output.with_name(f".{output.name}.partial"), output.with_name(f".{output.name}.progress.json")
    run = run or {}
    start, truncated = 0, 0
    main = is_main_process()  # under accelerate launch every process scores a share; the main one writes
    if resume:
        if not progress.exists() or not partial.exists():
            raise UserError(f"{output}: no interrupted run to resume (no {progress.name} beside it)")
        state = read_json(progress)
        changed = sorted(k for k in {*run, *state.get("run", {})} if run.get(k) != state["run"].get(k))
        if changed:
            raise UserError(f"{output}: the interrupted run had other {', '.join(changed)}; rerun with those, or delete "
                            f"{partial.name} and {progress.name} to start again")
        start, truncated = state["rows"], state["truncated"]
    elif partial.exists():
        raise UserError(f"{output}: an interrupted run left {partial.name}; pass --resume to continue it, or delete it to start again")
    wait_for_everyone()  # every process has read the state before the main one changes it
    if main and resume:
        with open(partial, "r+b") as handle:  # drop what a chunk killed mid-write left after the last finished one
            handle.truncate(state["bytes"])
    elif main:
        partial.parent.mkdir(parents=True, exist_ok=True)
        partial.write_bytes(b"")
    try:
        for first in range(start, len(rows), chunk_rows):
            last = min(first + chunk_rows, len(rows))
            try:
                scores = score_across_processes(source, list(prompts[first:last]), list(responses[first:last]), batch_size)
            except UserError as err:  # its row numbers count from the chunk's first row
                kept = f"; rows 1–{first} are kept: fix it and pass --resume" if first else ""
                raise UserError(f"{err} (in the chunk of input rows {first + 1}–{last}{kept})") from None
            truncated += scores.truncated
            if not main:
                continue
            with open(partial, "a") as handle:
                handle.write("".join(json.dumps({**rows[first + i], **scores.row_fields(i)}) + "\n" for i in range(last - first)))
                handle.flush()
                os.fsync(handle.fileno())
            write_json(progress, {"run": run, "rows": last, "bytes": partial.stat().st_size, "truncated": truncated})
    except BaseException:
        if main and not progress.exists():  # no chunk finished: nothing to resume, nothing left behind
            partial.unlink(missing_ok=True)
        raise
    if not main:
        return truncated
    partial.replace(output)
    progress.unlink(missing_ok=True)
    return truncated
