"""HaF vs Bradley–Terry vs DPO: held-out pairwise accuracy of the three objectives trained on the same pairs.

Training sources (deterministic subsets, printed with the results):
- hh:     the first --pairs valid pairs of hh_rlhf_harmless/train; held out: the first --test-pairs of its test split;
- alpaca: pairs of alpaca_eval outputs of one instruction (outputs ordered by generator name, taken two by
          two, kept when their gold_winrate differ by at least 0.3, chosen = higher, at most 2 per
          instruction); instruction_id < 500 for training, the others held out. The generator `example`
          is left out: its 805 outputs are adversarial gibberish that the judge nonetheless rates highly
          (gold_winrate 0.99 on instruction 0), so its labels would teach the opposite of quality.
Every model is also evaluated on the other source's held-out pairs and on PandaLM (out of distribution).
Each (source, objective, seed) trains SmolLM2-135M with LoRA r=16, batch 8, lr 1e-4, one epoch.
No setting was tuned on a test split. Runs go seed by seed and are appended to --out as they finish; a
rerun with the same settings skips the runs already recorded and reports them with the new ones.
Reference log-probabilities (haf, dpo) are cached next to --out: they depend on the backbone and data only.

    python bench/haf_vs_bt.py [--sources hh alpaca] [--pairs 512] [--test-pairs 256] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from rewardstack.config import TrainConfig
from rewardstack.data.encode import encode_pairs
from rewardstack.data.load import Columns, load_preferences
from rewardstack.evaluation import evaluate_encoded
from rewardstack.model import RewardModel
from rewardstack.training import train

from common import DATA, alpaca_pairs, head_rows, write_rows

OBJECTIVES = ("bt", "haf", "dpo")


def mean_std(values: list[float]) -> str:
    """mean ± sample standard deviation over seeds."""
    return f"{np.mean(values):.3f} ± {np.std(values, ddof=1) if len(values) > 1 else 0.0:.3f}"


def read_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line] if path.exists() else []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", nargs="+", default=["hh", "alpaca"], choices=["hh", "alpaca"])
    parser.add_argument("--objectives", nargs="+", default=list(OBJECTIVES), choices=OBJECTIVES)
    parser.add_argument("--pairs", type=int, default=512)
    parser.add_argument("--test-pairs", type=int, default=256)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--out", type=Path, default=Path("bench/results/haf_vs_bt.jsonl"),
                        help="one JSON line per run; runs already there (same settings) are not repeated")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-haf-"))
    alpaca_train, alpaca_test = alpaca_pairs() if "alpaca" in args.sources else ([], [])
    train_files = {
        "hh": write_rows(head_rows(DATA / "hh_rlhf_harmless" / "train.jsonl.gz", args.pairs), work / "hh_train.jsonl"),
        "alpaca": write_rows(alpaca_train[: args.pairs], work / "alpaca_train.jsonl"),
    }
    test_files = {
        "hh": write_rows(head_rows(DATA / "hh_rlhf_harmless" / "test.jsonl.gz", args.test_pairs), work / "hh_test.jsonl"),
        "pandalm": write_rows(head_rows(DATA / "pandalm" / "test.jsonl.gz", args.test_pairs), work / "pandalm_test.jsonl"),
    }
    if "alpaca" in args.sources:
        test_files["alpaca"] = write_rows(alpaca_test[: args.test_pairs], work / "alpaca_test.jsonl")
    print(f"rows: hh train = first {args.pairs} valid pairs, hh/pandalm test = first {args.test_pairs} valid pairs; "
          f"alpaca pairs built: {len(alpaca_train)} train / {len(alpaca_test)} held out, first {args.pairs} / {args.test_pairs} used")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    ref_cache = str(args.out.parent / "reference-logprobs")  # log π_ref depends on backbone and data only
    settings = {"pairs_asked": args.pairs, "test_pairs": args.test_pairs, "max_length": args.max_length}
    results = [r for r in read_records(args.out) if all(r.get(k) == v for k, v in settings.items())]
    done = {(r["source"], r["objective"], r["seed"]) for r in results}
    for seed in args.seeds:  # seed-major: an interrupted run still holds complete comparisons
        for source in args.sources:
            for objective in args.objectives:
                if (source, objective, seed) in done:
                    continue
                config = TrainConfig(model="smollm2-135m", max_length=args.max_length, lora_r=16, batch_size=8,
                                     learning_rate=1e-4, objective=objective, seed=seed, ref_cache_dir=ref_cache,
                                     columns=Columns())
                run = work / f"{source}-{objective}-{seed}"
                started = time.perf_counter()
                _, summary = train(config, train_files[source], output_dir=run)
                wall = time.perf_counter() - started
                model = RewardModel.from_pretrained(run / "model")
                record = {**settings, "source": source, "objective": objective, "seed": seed,
                          "pairs": summary["train"]["pairs"], "train_seconds": summary["train_seconds"],
                          "wall_seconds": wall, "eval": {}}
                for name, path in test_files.items():
                    pairs, _ = load_preferences(path)
                    record["eval"][name] = evaluate_encoded(model, encode_pairs(model.encoder, pairs), ref_cache_dir=ref_cache)
                results.append(record)
                with open(args.out, "a") as handle:
                    handle.write(json.dumps(record) + "\n")
                line = ", ".join(f"{k} {v['accuracy']:.3f}" for k, v in record["eval"].items())
                print(f"{source:<7}{objective:<5}seed {seed}: {line}; {record['train_seconds'] / record['pairs']:.2f} s/pair", flush=True)

    print(f"\n{'train':<8}{'objective':<10}{'seeds':>6}" + "".join(f"{name:>18}" for name in test_files) + f"{'implicit (own)':>18}{'s/pair':>9}")
    for source in args.sources:
        for objective in args.objectives:
            runs = [r for r in results if r["source"] == source and r["objective"] == objective and r["seed"] in args.seeds]
            if not runs:
                continue
            cells = []
            for name in test_files:
                cells.append(mean_std([r["eval"][name]["accuracy"] for r in runs]))
            implicit = [r["eval"][source]["implicit_reward"]["accuracy"] for r in runs if "implicit_reward" in r["eval"][source]]
            implicit_cell = mean_std(implicit) if implicit else "-"
            per_pair = np.mean([r["train_seconds"] / r["pairs"] for r in runs])
            print(f"{source:<8}{objective:<10}{len(runs):>6}" + "".join(f"{c:>18}" for c in cells) + f"{implicit_cell:>18}{per_pair:>9.2f}")
    print(f"details: {args.out}")


if __name__ == "__main__":
    main()
