"""Best-of-8 on MATH (math/math_cot_100): our reward model vs the file's own reward model vs majority vote
vs random choice, by gold correctness.

Our reward model: SmolLM2-135M, LoRA r=16, Bradley–Terry, one epoch (batch 8, lr 1e-4) on pairs from
gsm8k/example_model_solutions (first --questions questions; per question, each correct solver solution
paired with each incorrect one, at most 2 pairs; micro-batches of 2 pairs, since 8 pairs of 768 tokens at
once need more than 24 GiB). max_length 768, so the final answer at the end of a MATH response is rarely cut (truncation is counted and printed). Every method is scored by the exact
expected correctness of best-of-n over all n-subsets of the 8 samples (majority vote: by enumerating the
subsets, ties between answers split evenly).

    python bench/bon_math.py [--questions 64] [--pools 100]
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from rewardstack.bon import Objective, expected_best_of_n, run_best_of_n
from rewardstack.config import TrainConfig
from rewardstack.data.load import Columns, read_rows
from rewardstack.data.pools import load_pools
from rewardstack.model import RewardModel
from rewardstack.training import train

from common import DATA, write_rows


def gsm8k_solution_pairs(questions: int) -> list[dict]:
    rows = []
    for _, row in itertools.islice(read_rows(DATA / "gsm8k" / "example_model_solutions.jsonl.gz"), questions):
        solvers = [v for v in row.values() if isinstance(v, dict) and "solution" in v]
        good = [s["solution"] for s in solvers if s["is_correct"]]
        bad = [s["solution"] for s in solvers if not s["is_correct"]]
        for chosen, rejected in itertools.islice(itertools.product(good, bad), 2):
            if chosen != rejected:
                rows.append({"prompt": row["question"], "chosen": chosen, "rejected": rejected})
    return rows


def majority_vote_accuracy(answers: list[str], correct: np.ndarray, n: int) -> float:
    """Expected correctness of the most frequent answer in a random n-subset (ties split evenly)."""
    totals = []
    for subset in itertools.combinations(range(len(answers)), n):
        counts = Counter(answers[i] for i in subset)
        top = max(counts.values())
        winners = [a for a, c in counts.items() if c == top]
        totals.append(np.mean([max(correct[i] for i in subset if answers[i] == a) for a in winners]))
    return float(np.mean(totals))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=64)
    parser.add_argument("--pools", type=int, default=100)
    parser.add_argument("--out", type=Path, default=Path("bench/results/bon_math.json"))
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-bon-math-"))
    train_rows = gsm8k_solution_pairs(args.questions)
    config = TrainConfig(model="smollm2-135m", max_length=768, lora_r=16, batch_size=8, micro_batch_size=2, learning_rate=1e-4,
                         columns=Columns())
    _, summary = train(config, write_rows(train_rows, work / "train.jsonl"), output_dir=work / "run")
    model = RewardModel.from_pretrained(work / "run" / "model")

    pools, _ = load_pools(DATA / "math" / "math_cot_100.jsonl.gz")
    pools = pools[: args.pools]
    preds = {}
    for _, row in itertools.islice(read_rows(DATA / "math" / "math_cot_100.jsonl.gz"), args.pools):
        preds[str(row["idx"])] = [str(p) for p in row["pred"]]
    started = time.perf_counter()
    ours = run_best_of_n(model, pools, [Objective.parse("mean")])
    scoring_seconds = time.perf_counter() - started
    ns = ours["n"]
    curves = {
        "random": [float(np.mean([p.gold.mean() for p in pools]))] * len(ns),
        "rewardstack RM": ours["curves"]["mean"]["gold"],
        "file's pred_score RM": np.mean([expected_best_of_n(p.reference, p.gold, ns) for p in pools], axis=0).tolist(),
        "majority vote": [float(np.mean([majority_vote_accuracy(preds[p.key], p.gold, n) for p in pools])) for n in ns],
        "oracle (any correct)": [float(np.mean([expected_best_of_n(p.gold, p.gold, [n])[0] for p in pools])) for n in ns],
    }
    print(f"reward model: {summary['train']['pairs']} gsm8k solution pairs from the first {args.questions} questions "
          f"({summary['train']['truncated']} truncated), trained in {summary['train_seconds']:.0f} s")
    print(f"{len(pools)} MATH problems × 8 samples; {ours['truncated']} of {sum(len(p.responses) for p in pools)} responses "
          f"truncated at 768 tokens; scored in {scoring_seconds:.0f} s")
    print(f"\n{'method':<24}" + "".join(f"{'n=' + str(n):>8}" for n in ns))
    for name, curve in curves.items():
        print(f"{name:<24}" + "".join(f"{v:>8.3f}" for v in curve))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"settings": vars(args) | {"out": str(args.out)}, "train": summary, "curves": curves,
                                    "scoring_seconds": scoring_seconds}, indent=2, default=str))
    print(f"details: {args.out}")


if __name__ == "__main__":
    main()
