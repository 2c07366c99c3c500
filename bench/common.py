"""Shared by the benchmarks: rows from ../shared/data, alpaca_eval preference pairs, and the left-padded
reward passes and variance agreement of the Laplace comparisons."""

from __future__ import annotations

import gzip
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from transformers import BatchEncoding

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


def pad_left(sequences, pad_id: int) -> BatchEncoding:
    """Token-id lists left-padded to one width: input_ids and attention_mask, (sequences, tokens)."""
    width = max(len(s) for s in sequences)
    ids = torch.tensor([[pad_id] * (width - len(s)) + list(s) for s in sequences])
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in sequences])
    return BatchEncoding({"input_ids": ids, "attention_mask": mask})


def left_padded_rewards(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """A RewardModel's rewards on left-padded sequences, (sequences, 1): read at position −1, position ids
    from the attention mask (equal to its own right-padded pass), for tools whose hooks read position −1."""
    positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    hidden = model.decoder(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions).last_hidden_state
    return model.head(hidden[:, -1])


def agreement(ours_var: np.ndarray, theirs_var: np.ndarray, tool: str) -> str:
    """Pearson and Spearman correlation of the two tools' reward stds, their ratio, and negative variances."""
    ours, theirs = np.sqrt(ours_var), np.sqrt(np.clip(theirs_var, 0, None))
    ranks = [np.argsort(np.argsort(x)) for x in (ours, theirs)]
    ratio = theirs / ours
    return (f"agreement of std: Pearson {np.corrcoef(ours, theirs)[0, 1]:.3f}, Spearman {np.corrcoef(*ranks)[0, 1]:.3f}, "
            f"ratio {tool}/rewardstack median {np.median(ratio):.3f} (5–95 %: {np.percentile(ratio, 5):.3f}–"
            f"{np.percentile(ratio, 95):.3f}); negative variances from {tool}: {int((theirs_var < 0).sum())}")
