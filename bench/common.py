"""Shared by the benchmarks: rows from ../shared/data, alpaca_eval preference pairs, and the left-padded
reward passes and variance agreement of the Laplace comparisons."""

from __future__ import annotations

import argparse
import gzip
import json
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import BatchEncoding

from rewardstack.bayes import Laplace
from rewardstack.bayes.predict import reward_moments
from rewardstack.data.encode import Encoded, EncodedPairs, encode_pairs
from rewardstack.data.load import load_preferences
from rewardstack.model import RewardModel

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


@dataclass
class LoraLaplaceRun:
    """rewardstack's side of a Laplace comparison: the model (LoRA weights trainable, head frozen, as the
    other tools expect), fitting pairs, held-out responses, and our δ, fit time, variance time, variances."""

    model: RewardModel
    pairs: EncodedPairs
    sequences: list[Encoded]
    prior_precision: float
    fit_seconds: float
    predict_seconds: float
    variances: np.ndarray


def comparison_arguments(description: str) -> argparse.ArgumentParser:
    """The options every Laplace comparison takes; a script adds its own."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model-dir", required=True, help="a trained LoRA reward model (bt or haf)")
    parser.add_argument("--data", required=True, help="the pairs to fit on")
    parser.add_argument("--test", required=True, help="pairs whose responses get a variance")
    parser.add_argument("--batch-size", type=int, default=8, help="pairs per fitting batch")
    return parser


def rewardstack_lora_laplace(args: argparse.Namespace) -> LoraLaplaceRun:
    """Fit our posterior over the LoRA weights alone (`--subset lora`) and time the variances of every
    held-out chosen and rejected response."""
    torch.manual_seed(0)
    model = RewardModel.from_pretrained(args.model_dir)
    model.posterior = None
    model.eval()
    pairs = encode_pairs(model.encoder, load_preferences(args.data)[0])
    test = encode_pairs(model.encoder, load_preferences(args.test)[0])
    sequences = test.chosen + test.rejected
    print(f"{len(pairs)} fitting pairs, {len(sequences)} held-out responses, LoRA rank {model.config.lora_r}")
    started = time.perf_counter()
    posterior = Laplace(model, subset="lora", batch_size=args.batch_size).fit(pairs).posterior
    fit_seconds = time.perf_counter() - started
    started = time.perf_counter()
    _, variances = reward_moments(model, sequences, batch_size=args.batch_size)
    predict_seconds = time.perf_counter() - started
    for name, parameter in model.named_parameters():  # the other tools take every trainable weight for a LoRA one
        parameter.requires_grad_("lora_" in name)
    return LoraLaplaceRun(model, pairs, sequences, posterior.prior_precision, fit_seconds, predict_seconds, variances)


def print_comparison(ours: LoraLaplaceRun, tool: str, fit_seconds: float, predict_seconds: float, variances: np.ndarray) -> None:
    """Fit time, time per variance and median std of both tools, their ratios, and agreement of the stds:
    Pearson and Spearman correlation, the std ratio, and negative variances from the other tool."""
    count = len(ours.sequences)
    print(f"prior precision (rewardstack evidence, used by both): {ours.prior_precision:.4g}")
    print(f"{'':<16}{'fit s':>8}{'ms/variance':>13}{'median std':>12}")
    for name, fit, predict, var in (("rewardstack", ours.fit_seconds, ours.predict_seconds, ours.variances), (tool, fit_seconds, predict_seconds, variances)):
        print(f"{name:<16}{fit:>8.1f}{1000 * predict / count:>13.1f}{np.median(np.sqrt(np.clip(var, 0, None))):>12.4f}")
    print(f"ratios {tool} / rewardstack: fit {fit_seconds / ours.fit_seconds:.2f}x, variance {predict_seconds / ours.predict_seconds:.2f}x")
    mine, theirs = np.sqrt(ours.variances), np.sqrt(np.clip(variances, 0, None))
    ranks = [np.argsort(np.argsort(x)) for x in (mine, theirs)]
    ratio = theirs / mine
    print(f"agreement of std: Pearson {np.corrcoef(mine, theirs)[0, 1]:.3f}, Spearman {np.corrcoef(*ranks)[0, 1]:.3f}, "
          f"ratio {tool}/rewardstack median {np.median(ratio):.3f} (5–95 %: {np.percentile(ratio, 5):.3f}–"
          f"{np.percentile(ratio, 95):.3f}); negative variances from {tool}: {int((variances < 0).sum())}")
