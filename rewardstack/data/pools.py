"""Candidate pools for best-of-n: several responses to one prompt, with optional gold scores.

Formats, recognised per row by their fields:
- generic: `prompt` (string or chat messages), `responses` (list of strings), and optionally `gold` (one
  number or boolean per response) or `answer` (gold = whether each response's final answer matches it);
- MATH-style samples (`question`, `code`: responses, `score`: correctness; `pred_score`, another reward
  model's scores, kept as `reference`);
- GSM8K model solutions (`question`, `ground_truth`, and one `{is_correct, solution}` object per solver);
- alpaca_eval outputs (one row per output: `instruction_id`, `instruction`, `generator`, `output`,
  `gold_winrate`), grouped into one pool per instruction.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import UserError
from ..files import write_text
from ..gold import answer_is_correct
from .encode import as_messages
from .load import DroppedRow, LoadReport, Message, RowError, _prompt_messages, _required, _string, parse_rows, source_name


@dataclass
class Pool:
    """Responses to one prompt; gold[i] and reference[i] belong to responses[i] (None when absent)."""

    key: str
    prompt: tuple[Message, ...]
    responses: list[str]
    response_ids: list[str]
    gold: np.ndarray | None = None
    reference: np.ndarray | None = None
    group: str | None = None  # a category of the prompt (alpaca_eval's `dataset`, a pool's `group`)


@dataclass
class PromptRow:
    """A prompt to sample responses for; `answer`, when given, decides each response's gold."""

    key: str
    prompt: tuple[Message, ...]
    answer: str | None = None
    group: str | None = None  # a category of the prompt (the row's `group`), for per-group reports


def load_prompts(source: Any, prompt_key: str = "prompt", answer_key: str = "answer", skip_invalid: bool = False) -> tuple[list[PromptRow], LoadReport]:
    """Rows with a prompt (string or chat messages) and optionally a verifiable answer."""
    def parse(row: dict, row_number: int) -> PromptRow:
        prompt = tuple(_prompt_messages(_required(row, prompt_key), prompt_key))
        answer, group = row.get(answer_key), row.get("group")
        return PromptRow(str(row.get("id", f"row {row_number}")), prompt, None if answer is None else str(answer), None if group is None else str(group))

    report = LoadReport(source_name(source))
    rows = list(parse_rows(source, parse, skip_invalid, report))
    if not rows:
        raise UserError(f"{report.source}: no prompts ({report.rows} rows, skipped {dict(report.skipped)})")
    return rows, report


def load_pools(source: Any, skip_invalid: bool = False) -> tuple[list[Pool], LoadReport]:
    """Read candidate pools; invalid rows raise a UserError naming source, row and field, or are counted
    with `skip_invalid`. A pool keeps its responses in source order; alpaca_eval's rows (one output each)
    are grouped by instruction."""
    grouped: dict[str, Pool] = {}

    def parse(row: dict, row_number: int) -> Pool | None:
        if {"instruction_id", "output", "gold_winrate"} <= row.keys():
            return _add_alpaca_output(row, grouped)
        return _pool_of(row, f"row {row_number}")

    report = LoadReport(source_name(source))
    pools = list(parse_rows(source, parse, skip_invalid, report)) + list(grouped.values())
    report.pairs = len(pools)
    if not pools:
        raise UserError(f"{report.source}: no candidate pools ({report.rows} rows, skipped {dict(report.skipped)})")
    return pools, report


def write_pools(pools: Sequence[Pool], path: str | Path) -> None:
    """Pools as generic rows (id, prompt, responses, gold and group when known), readable by load_pools."""
    lines = []
    for pool in pools:
        row = {"id": pool.key, "prompt": list(pool.prompt), "responses": pool.responses}
        if pool.gold is not None:
            row["gold"] = pool.gold.tolist()
        if pool.group is not None:
            row["group"] = pool.group
        lines.append(json.dumps(row) + "\n")
    write_text(path, "".join(lines))


def gold_pairs(pools: Sequence[Pool], per_pool: int, seed: int = 0, min_gap: float = 0.5) -> list[dict]:
    """Preference rows {prompt, chosen, rejected} from pools with gold: per pool, up to `per_pool`
    pairs drawn at random (seeded) from the response pairs whose gold differs by at least `min_gap`,
    chosen = the higher gold; responses with the same text are never paired."""
    rng = random.Random(seed)
    rows = []
    for pool in pools:
        if pool.gold is None:
            raise UserError(f"pool {pool.key}: preference pairs need gold scores")
        candidates = [
            (i, j)
            for i in range(len(pool.responses))
            for j in range(len(pool.responses))
            if pool.gold[i] - pool.gold[j] >= min_gap and pool.responses[i] != pool.responses[j]
        ]
        for i, j in rng.sample(candidates, min(per_pool, len(candidates))):
            rows.append({"prompt": list(pool.prompt), "chosen": pool.responses[i], "rejected": pool.responses[j]})
    return rows


def _pool_of(row: dict, key: str) -> Pool:
    if "responses" in row:
        responses = _strings(row, "responses")
        gold = None
        if row.get("gold") is not None:
            gold = _numbers(row, "gold", len(responses))
        elif row.get("answer") is not None:
            answer = str(row["answer"])
            gold = np.array([float(answer_is_correct(r, answer)) for r in responses])
        prompt = tuple(_prompt_messages(_required(row, "prompt"), "prompt"))
        group = None if row.get("group") is None else str(row["group"])
        return Pool(str(row.get("id", key)), prompt, responses, [str(i) for i in range(len(responses))], gold, group=group)
    if {"question", "code", "score"} <= row.keys():
        responses = _strings(row, "code")
        reference = None
        if row.get("pred_score") is not None:
            reference = np.array([float(np.mean(s)) if isinstance(s, list) else float(s) for s in row["pred_score"]])
        return Pool(str(row.get("idx", key)), as_messages(_string(row, "question")), responses,
                    [str(i) for i in range(len(responses))], _numbers(row, "score", len(responses)), reference)
    if {"question", "ground_truth"} <= row.keys():
        solvers = {k: v for k, v in row.items() if isinstance(v, dict) and "solution" in v and "is_correct" in v}
        if not solvers:
            raise RowError("missing field", None, "a GSM8K solutions row needs solver objects with 'solution' and 'is_correct'")
        responses = [str(v["solution"]) for v in solvers.values()]
        gold = np.array([float(bool(v["is_correct"])) for v in solvers.values()])
        return Pool(key, as_messages(_string(row, "question")), responses, list(solvers), gold)
    raise RowError("unknown format", None, "expected 'prompt' and 'responses' (or a MATH, GSM8K solutions or alpaca_eval row)")


def _add_alpaca_output(row: dict, grouped: dict[str, Pool]) -> None:
    """Add an alpaca_eval output to its instruction's pool in `grouped` (the pool is yielded at the end)."""
    output, winrate = row.get("output"), row.get("gold_winrate")
    if not isinstance(output, str) or not output.strip() or winrate is None:
        raise DroppedRow("empty output or no gold_winrate")
    key = str(row["instruction_id"])
    if key not in grouped:
        grouped[key] = Pool(key, as_messages(_string(row, "instruction")), [], [], np.empty(0), group=row.get("dataset"))
    pool = grouped[key]
    pool.responses.append(output)
    pool.response_ids.append(str(row.get("generator", len(pool.responses) - 1)))
    pool.gold = np.append(pool.gold, float(winrate))


def _strings(row: dict, key: str) -> list[str]:
    value = _required(row, key)
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise RowError("wrong type", key, "expected a non-empty list of strings")
    return value


def _numbers(row: dict, key: str, length: int) -> np.ndarray:
    value = _required(row, key)
    if not isinstance(value, list) or len(value) != length:
        raise RowError("wrong type", key, f"expected a list of {length} numbers (one per response)")
    try:
        return np.array([float(v) for v in value])
    except (TypeError, ValueError):
        raise RowError("wrong type", key, "expected numbers or booleans") from None
