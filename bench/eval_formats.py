"""Every evaluation format on fixtures built here from generated word problems (right answers over wrong
ones), for any reward sources: RewardBench 2 rows (one chosen, three rejected, six subsets, Ties with
ref/tied ids), RewardBench v1 pairs, aligned 3×3 style rows, and A/B-labelled rows with ties.

    python bench/eval_formats.py --reward runs/demo/run/model --reward runs/demo-hf [--problems 40]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

from rewardstack.evaluation import evaluate, format_table
from rewardstack.sources import load_source
from rewardstack.synthetic import word_problems, write_jsonl

V2_SUBSETS = ("Factuality", "Precise IF", "Math", "Safety", "Focus")
V1_SUBSETS = ("alpacaeval-easy", "mt-bench-hard", "refusals-dangerous", "math-prm")


def answers(problem: dict, rng: random.Random) -> tuple[list[str], list[str]]:
    """Three phrasings of the right answer (concise, sentence, markdown) and of three wrong ones."""
    right = int(problem["answer"])
    wrong = rng.sample([right + d for d in (-3, -2, -1, 1, 2, 4)], 3)
    styles = ("{}.", "The answer is {}.", "**Answer:** {}")
    return [s.format(right) for s in styles], [styles[i].format(w) for i, w in enumerate(wrong)]


def fixtures(count: int, folder: Path) -> dict[str, tuple[Path, str]]:
    rng = random.Random(0)
    problems = word_problems(count, seed=7)
    rb2, v1, styles, ab = [], [], [], []
    for i, problem in enumerate(problems):
        right, wrong = answers(problem, rng)
        prompt = problem["prompt"]
        if i % 6 < 5:
            rb2.append({"id": str(i), "prompt": prompt, "chosen": [right[1]], "rejected": [wrong[0], wrong[1], wrong[2].replace("**Answer:** ", "")],
                        "subset": V2_SUBSETS[i % 6]})
        else:
            rb2.append({"id": f"ref:{i}", "prompt": prompt, "chosen": [right[1]], "rejected": wrong, "subset": "Ties"})
            rb2.append({"id": f"tied:{i}", "prompt": prompt, "chosen": right, "rejected": wrong, "subset": "Ties"})
        v1.append({"prompt": prompt, "chosen": right[1], "rejected": wrong[1], "subset": V1_SUBSETS[i % len(V1_SUBSETS)]})
        styles.append({"prompt": prompt, "chosen": right, "rejected": wrong})
        label = rng.choice(["A>B", "B>A", "tie"])
        a, b = {"A>B": (right[1], wrong[1]), "B>A": (wrong[1], right[1]), "tie": (right[0], right[1])}[label]
        ab.append({"prompt": prompt, "response_A": a, "response_B": b, "label": label})
    return {name: (write_jsonl(rows, folder / f"{name}.jsonl"), fmt) for name, rows, fmt in
            (("rewardbench2", rb2, "rewardbench2"), ("rewardbench", v1, "rewardbench"), ("styles", styles, "auto"), ("ab", ab, "auto"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reward", action="append", required=True, help="a model folder or YAML tree (repeatable)")
    parser.add_argument("--problems", type=int, default=60)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sets = fixtures(args.problems, Path(tmp))
        for reward in args.reward:
            source = load_source(reward)
            for name, (path, fmt) in sets.items():
                started = time.perf_counter()
                results = evaluate(source, {name: str(path)}, format=fmt)
                print(f"\n== {reward}: {name} (--format {fmt}), {time.perf_counter() - started:.1f} s")
                print(format_table(results))


if __name__ == "__main__":
    main()
