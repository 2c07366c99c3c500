"""LASeR in iterative preference optimisation on mixed tasks: arithmetic word problems and StrategyQA.

Prompts (group = task): --per-task arithmetic word problems (rewardstack.synthetic.word_problems, seed 1)
and the first --per-task StrategyQA train questions; dev: --dev-per-task of each (word problems seed 2,
the first StrategyQA dev questions). A StrategyQA prompt is the question plus STRATEGYQA_INSTRUCTION;
its answer is checked as yes/no.
Members (K = 3, MAP rewards): `arith`, a reward model trained on arithmetic-correctness pairs (the model
`make demo` trains: runs/demo/run/model); `harmless`, a Bradley–Terry model on hh_rlhf_harmless (from
bench/haf_vs_bt.py); `length`, the response's word count.
Selections, each from the same initial policy (SmolLM2-135M-Instruct + fresh LoRA) with the same
settings: `bandit` (LinUCB α = --alpha per prompt, context = the policy's last hidden state of the
prompt, projected to 16 dimensions), `random` (a member per prompt), `ensemble` (mean of the members'
rewards) and `single:NAME` for every member. Reported: greedy dev accuracy per task after each
iteration, training seconds, how often each source's preference pairs agree with the answers, and the
bandit's arm choice per task per iteration (plus a plot).

    python bench/laser_optimize.py --arith-model runs/demo/run/model --harmless-model DIR [--iterations 2]
        [--learning-rate 5e-5] [--selections bandit random ensemble single:arith ...]
Runs resume: a selection already in OUT/results.json with all its iterations is not rerun.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from collections import Counter, defaultdict
from dataclasses import replace
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from rewardstack.data.load import read_rows  # noqa: E402
from rewardstack.data.pools import load_prompts  # noqa: E402
from rewardstack.laser.optimize import OptimizeConfig, Optimizer  # noqa: E402
from rewardstack.sources import build_source  # noqa: E402
from rewardstack.synthetic import word_problems  # noqa: E402

from common import DATA, write_rows  # noqa: E402

STRATEGYQA_INSTRUCTION = " Answer yes or no, then give one short reason."


def task_rows(per_task: int, arithmetic_seed: int, strategyqa_file: str) -> list[dict]:
    """Arithmetic and StrategyQA prompt rows, alternating, with `group` = task."""
    arithmetic = [dict(row, group="arithmetic") for row in word_problems(per_task, seed=arithmetic_seed)]
    strategyqa = [{"id": row["qid"], "prompt": row["question"] + STRATEGYQA_INSTRUCTION, "answer": str(row["answer"]).lower(), "group": "strategyqa"}
                  for _, row in itertools.islice(read_rows(DATA / "strategyqa" / strategyqa_file), per_task)]
    return [row for pair in zip(arithmetic, strategyqa) for row in pair]


def plot(results: dict, path: Path) -> None:
    tasks = ("arithmetic", "strategyqa")
    figure, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, task in zip(axes, tasks):
        for selection, history in results.items():
            ax.plot([h["iteration"] for h in history], [h["accuracy"][task] for h in history], marker="o", label=selection)
        ax.set(title=f"{task}: greedy dev accuracy", xlabel="iteration", ylabel="accuracy")
    axes[0].legend(fontsize=8)
    bandit = results.get("bandit", [])[1:]
    members = sorted({name for h in bandit for counts in h["arms_by_group"].values() for name in counts})
    labels, bottoms = [f"{t[:5]} it{h['iteration']}" for h in bandit for t in tasks], np.zeros(len(bandit) * len(tasks))
    for name in members:
        shares = np.array([h["arms_by_group"].get(t, {}).get(name, 0) / max(1, sum(h["arms_by_group"].get(t, {}).values())) for h in bandit for t in tasks])
        axes[2].bar(labels, shares, bottom=bottoms, label=name)
        bottoms += shares
    axes[2].set(title="bandit: share of prompts per member", ylabel="share")
    axes[2].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arith-model", type=Path, required=True, help="a reward model trained on arithmetic correctness")
    parser.add_argument("--harmless-model", type=Path, required=True, help="a reward model trained on hh_rlhf_harmless")
    parser.add_argument("--per-task", type=int, default=16, help="training prompts per task")
    parser.add_argument("--dev-per-task", type=int, default=24)
    parser.add_argument("--iterations", type=int, default=2)
    parser.add_argument("--batch-prompts", type=int, default=8)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--learning-rate", type=float, default=5e-5)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--selections", nargs="+", default=["bandit", "random", "ensemble", "single:arith", "single:harmless", "single:length"])
    parser.add_argument("--out", type=Path, default=Path("bench/results/laser_optimize"))
    args = parser.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    train_file = write_rows(task_rows(args.per_task, 1, "train.jsonl.gz"), args.out / "train_prompts.jsonl")
    dev_rows = task_rows(args.dev_per_task, 2, "dev.jsonl.gz")
    dev_files = {task: write_rows([r for r in dev_rows if r["group"] == task], args.out / f"dev_{task}.jsonl") for task in ("arithmetic", "strategyqa")}
    prompts = load_prompts(train_file)[0]
    dev = {task: load_prompts(path)[0] for task, path in dev_files.items()}
    tree = {"kind": "bandit", "algorithm": "linucb", "per": "instance", "params": {"alpha": args.alpha}, "context": {"kind": "policy", "dim": 16},
            "members": [{"name": "arith", "source": {"kind": "model", "path": str(args.arith_model.resolve()), "posterior": False}},
                        {"name": "harmless", "source": {"kind": "model", "path": str(args.harmless_model.resolve()), "posterior": False}},
                        {"name": "length", "source": {"kind": "rule", "builtin": "length"}}]}
    config = OptimizeConfig(iterations=args.iterations, batch_prompts=args.batch_prompts, n=args.n, max_new_tokens=args.max_new_tokens,
                            learning_rate=args.learning_rate)
    print(f"{len(prompts)} training prompts ({args.per_task} per task), dev {args.dev_per_task} per task; "
          f"{args.iterations} iterations, batches of {args.batch_prompts}, n={args.n}, {args.max_new_tokens} new tokens", flush=True)
    results_path = args.out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    for selection in args.selections:
        if selection in results and len(results[selection]) == args.iterations + 1:
            continue
        run_dir = args.out / selection.replace(":", "-")
        started = time.perf_counter()
        history = Optimizer(build_source(tree), replace(config, selection=selection), run_dir).run(prompts, dev, resume=run_dir.exists())
        results[selection] = history
        results_path.write_text(json.dumps(results, indent=1))
        line = "  ".join(f"it{h['iteration']} " + "/".join(f"{a:.3f}" for a in h["accuracy"].values()) for h in history)
        print(f"{selection:<16}{line}  ({time.perf_counter() - started:.0f} s)", flush=True)

    print(f"\n{'selection':<17}" + "".join(f"{t + ' it' + str(i):>16}" for t in dev for i in range(args.iterations + 1)) + f"{'train s':>9}")
    for selection, history in results.items():
        cells = "".join(f"{h['accuracy'][t]:>16.3f}" for t in dev for h in history)
        print(f"{selection:<17}{cells}{sum(h['seconds'] for h in history):>9.0f}")
    print("\npreference pairs judged by the answers (chosen right & rejected wrong / the reverse / neither), all iterations:")
    for selection, history in results.items():
        totals: dict[str, Counter] = defaultdict(Counter)
        for h in history[1:]:
            for source, counts in h["gold_pairs"].items():
                totals[source].update(counts)
        print(f"  {selection:<16}" + "; ".join(f"{source} {c['agree']}/{c['disagree']}/{c['neither']}" for source, c in sorted(totals.items())))
    print("\nbandit arm choice (prompts) per task and iteration:")
    for h in results.get("bandit", [])[1:]:
        print(f"  iteration {h['iteration']}: " + "; ".join(f"{task}: {counts}" for task, counts in sorted(h["arms_by_group"].items())))
    plot(results, args.out / "laser_optimize.png")
    print(f"details: {results_path}, plot: {args.out / 'laser_optimize.png'}")


if __name__ == "__main__":
    main()
