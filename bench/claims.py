"""Do the methods do what their papers claim, here? Paired experiments with intervals.

    python bench/claims.py --claim haf [--seeds 0 1 2 3 4] [--quick] [--out bench/results/claims]

Every arm of a claim runs on the same data with the same seeds (a seed picks the training rows and their
order), so arms are compared run by run. Each finished run is appended to <out>/<claim>.jsonl with its
per-item results; a rerun with the same settings skips the runs already there, so an interrupted claim
continues where it stopped. An effect is the mean difference between two arms over seeds and test items;
its 95 % interval is a paired bootstrap that resamples seeds and test items together (both sources of
noise), and its verdict is "holds" or "fails" when the interval excludes zero, "inconclusive" when it
spans zero. The report goes to the terminal, <out>/<claim>.md and <out>/<claim>.png.

Claims:
- haf: the HaF objective (reward head + token-level policy loss) against Bradley–Terry and DPO, on
  generated arithmetic pairs (rewardstack.synthetic): held-out pairs of the training world and of three
  shifted worlds (larger numbers, other templates, division). Accuracy of the reward head (bt, haf) or the
  implicit reward (dpo); haf's implicit reward reported beside.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

BOOTSTRAP_SAMPLES = 4000


def paired_bootstrap(differences: np.ndarray, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0) -> tuple[float, float, float]:
    """Mean of a (seeds, items) matrix of paired differences and its 95 % percentile interval, resampling
    seeds and items with replacement in each of `samples` replicates."""
    rng = np.random.default_rng(seed)
    seeds, items = differences.shape
    means = np.empty(samples)
    for b in range(samples):
        rows, cols = rng.integers(seeds, size=seeds), rng.integers(items, size=items)
        means[b] = differences[np.ix_(rows, cols)].mean()
    low, high = np.percentile(means, [2.5, 97.5])
    return float(differences.mean()), float(low), float(high)


def verdict(low: float, high: float) -> str:
    """holds (interval above zero), fails (below zero) or inconclusive (spans zero)."""
    return "holds" if low > 0 else "fails" if high < 0 else "inconclusive"


@dataclass
class Effect:
    name: str  # e.g. "haf − bt, base"
    mean: float
    low: float
    high: float
    seeds: int
    items: int

    @property
    def verdict(self) -> str:
        return verdict(self.low, self.high)

    def row(self) -> str:
        return f"| {self.name} | {self.mean:+.4f} | [{self.low:+.4f}, {self.high:+.4f}] | {self.verdict} | {self.items} | {self.seeds} |"


class Records:
    """The finished runs of a claim, one JSON line each, filtered to the current settings."""

    def __init__(self, path: Path, settings: dict):
        self.path, self.settings = path, settings
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = path.read_text().splitlines() if path.exists() else []
        self.runs = [r for r in map(json.loads, filter(None, lines)) if r["settings"] == settings]

    def find(self, **key) -> dict | None:
        return next((r for r in self.runs if all(r[k] == v for k, v in key.items())), None)

    def add(self, record: dict) -> None:
        record = {"settings": self.settings, **record}
        self.runs.append(record)
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")


def pair_correct(chosen: np.ndarray, rejected: np.ndarray) -> list[float]:
    """1 where the chosen response gets the higher reward, 0.5 for a tie, 0 otherwise."""
    delta = np.asarray(chosen) - np.asarray(rejected)
    return ((delta > 0) + 0.5 * (delta == 0)).tolist()


# --- haf ----------------------------------------------------------------------------------------------

HAF_ARMS = ("bt", "haf", "dpo")


def haf_claim(args: argparse.Namespace, work: Path) -> tuple[list[Effect], dict, Callable]:
    from rewardstack.config import TrainConfig
    from rewardstack.data.encode import encode_pairs
    from rewardstack.data.load import load_preferences
    from rewardstack.evaluation import score_pairs
    from rewardstack.synthetic import WORLDS, arithmetic_pairs, write_jsonl
    from rewardstack.training import train

    settings = {"pairs": args.pairs, "test_pairs": args.test_pairs, "max_length": 128, "lora_r": 16, "batch_size": 8,
                "learning_rate": args.learning_rate, "epochs": 1, "model": args.model}
    records = Records(args.out / "haf.jsonl", settings)
    tests = {world: write_jsonl(arithmetic_pairs(args.test_pairs, seed=10_000 + i, world=world), work / f"test-{i}.jsonl")
             for i, world in enumerate(WORLDS)}
    for seed in args.seeds:
        train_file = write_jsonl(arithmetic_pairs(args.pairs, seed=seed), work / f"train-{seed}.jsonl")
        for arm in HAF_ARMS:
            if records.find(seed=seed, arm=arm):
                continue
            config = TrainConfig(model=args.model, max_length=128, lora_r=16, batch_size=8, learning_rate=args.learning_rate,
                                 objective=arm, seed=seed, ref_cache_dir=str(args.out / "reference-logprobs"))
            started = time.perf_counter()
            model, _ = train(config, train_file)
            correct, implicit = {}, {}
            for world, path in tests.items():
                pairs, _ = load_preferences(path)
                scores = score_pairs(model, encode_pairs(model.encoder, pairs), ref_cache_dir=config.ref_cache_dir)
                correct[world] = pair_correct(scores["chosen"], scores["rejected"])
                if "implicit_chosen" in scores:
                    implicit[world] = pair_correct(scores["implicit_chosen"], scores["implicit_rejected"])
            seconds = time.perf_counter() - started
            records.add({"seed": seed, "arm": arm, "correct": correct, "implicit": implicit, "seconds": seconds})
            summary = ", ".join(f"{w} {np.mean(c):.3f}" for w, c in correct.items())
            print(f"seed {seed} {arm:<4} {summary} ({seconds:.0f} s)", flush=True)

    def accuracy(arm: str, world: str, field: str = "correct") -> np.ndarray:
        return np.array([records.find(seed=s, arm=arm)[field][world] for s in args.seeds])

    effects = []
    for world in WORLDS:
        for name, a, b in (("haf − bt", accuracy("haf", world), accuracy("bt", world)),
                           ("dpo − bt", accuracy("dpo", world), accuracy("bt", world)),
                           ("haf implicit − dpo", accuracy("haf", world, "implicit"), accuracy("dpo", world))):
            effects.append(Effect(f"{name}, {world}", *paired_bootstrap(a - b), len(args.seeds), a.shape[1]))
    table = {f"{arm}{' implicit' if field == 'implicit' else ''}": {w: float(accuracy(arm, w, field).mean()) for w in WORLDS}
             for arm, field in (("bt", "correct"), ("haf", "correct"), ("haf", "implicit"), ("dpo", "correct"))}
    seconds = sum(r["seconds"] for r in records.runs if r["seed"] in args.seeds)

    def plot(axis) -> None:
        width = 0.2
        for k, (arm, by_world) in enumerate(table.items()):
            axis.bar(np.arange(len(WORLDS)) + k * width, list(by_world.values()), width, label=arm)
        axis.set_xticks(np.arange(len(WORLDS)) + 1.5 * width, list(WORLDS))
        axis.set_ylabel("held-out pair accuracy")
        axis.set_ylim(0.4, 1.0)
        axis.legend()

    return effects, {"accuracy": table, "seconds": seconds}, plot


CLAIMS = {"haf": haf_claim}


def report(claim: str, effects: list[Effect], extra: dict, plot: Callable, out: Path, command: str) -> str:
    """The effect table in Markdown (also written to out/<claim>.md) and the plot (out/<claim>.png)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = [f"### {claim}", "", f"`{command}`", "",
             "| effect | mean | 95 % interval | verdict | items | seeds |", "|---|---|---|---|---|---|"]
    lines += [e.row() for e in effects]
    if "accuracy" in extra:
        worlds = list(next(iter(extra["accuracy"].values())))
        lines += ["", "| arm | " + " | ".join(worlds) + " |", "|---|" + "---|" * len(worlds)]
        lines += [f"| {arm} | " + " | ".join(f"{v:.3f}" for v in by_world.values()) + " |" for arm, by_world in extra["accuracy"].items()]
    lines += ["", f"Compute: {extra['seconds'] / 60:.1f} min of runs (this machine)."]
    text = "\n".join(lines) + "\n"
    (out / f"{claim}.md").write_text(text)
    figure, axis = plt.subplots(figsize=(8, 4))
    plot(axis)
    axis.set_title(f"claim: {claim}")
    figure.tight_layout()
    figure.savefig(out / f"{claim}.png", dpi=120)
    plt.close(figure)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--claim", required=True, choices=sorted(CLAIMS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--quick", action="store_true", help="a small run to check the harness (2 seeds, few pairs)")
    parser.add_argument("--pairs", type=int, default=256, help="training pairs per run")
    parser.add_argument("--test-pairs", type=int, default=200, help="held-out pairs per test world")
    parser.add_argument("--learning-rate", type=float, default=2e-4)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--out", type=Path, default=Path("bench/results/claims"))
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.pairs, args.test_pairs = args.seeds[:2], 32, 24
    command = "python bench/claims.py " + " ".join(
        f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in vars(args).items()
        if k not in ("quick", "out") and v is not None)
    with tempfile.TemporaryDirectory(prefix="claims-") as work:
        effects, extra, plot = CLAIMS[args.claim](args, Path(work))
    print(report(args.claim, effects, extra, plot, args.out, command))


if __name__ == "__main__":
    main()
