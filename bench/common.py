"""Data shared by the benchmarks: rows from ../shared/data, and alpaca_eval preference pairs."""

from __future__ import annotations

import gzip
import json
from collections import defaultdict
from pathlib import Path

from rewardstack.data.load import load_preferences

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
ADVERSARIAL_GENERATOR = "example"  # alpaca_eval's null model: gibberish the judge rates highly


def alpaca_pairs(min_gap: float = 0.3, per_instruction: int = 2) -> tuple[list[dict], list[dict]]:
    """Pairs of alpaca_eval outputs to one instruction: outputs ordered by generator name and taken two by
    two, kept when their gold_winrate differ by at least `min_gap` (chosen = higher), at most
    `per_instruction` per instruction, the generator `example` left out. Returns (rows with
    instruction_id < 500, the other rows)."""
    by_instruction = defaultdict(list)
    with gzip.open(DATA / "alpaca_eval" / "outputs.jsonl.gz", "rt") as handle:
        for line in handle:
            row = json.loads(line)
            if row["generator"] != ADVERSARIAL_GENERATOR and row["output"].strip() and row["gold_winrate"] is not None:
                by_instruction[row["instruction_id"]].append(row)
    train_rows, test_rows = [], []
    for instruction_id in sorted(by_instruction):
        outputs = sorted(by_instruction[instruction_id], key=lambda r: r["generator"])
        kept = 0
        for a, b in zip(outputs[0::2], outputs[1::2]):
            if kept == per_instruction or abs(a["gold_winrate"] - b["gold_winrate"]) < min_gap or a["output"] == b["output"]:
                continue
            chosen, rejected = (a, b) if a["gold_winrate"] > b["gold_winrate"] else (b, a)
            pair = {"prompt": a["instruction"], "chosen": chosen["output"], "rejected": rejected["output"]}
            (train_rows if instruction_id < 500 else test_rows).append(pair)
            kept += 1
    return train_rows, test_rows


def head_rows(path: Path, n: int, skip: int = 0) -> list[dict]:
    """Valid pairs skip … skip + n of a preference file, as rows."""
    pairs, _ = load_preferences(path, skip_invalid=True)
    return [{"prompt": list(p.prompt), "chosen": p.chosen, "rejected": p.rejected} for p in pairs[skip : skip + n]]


def write_rows(rows: list[dict], path: Path) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)
