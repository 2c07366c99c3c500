"""Best-of-n on alpaca_eval candidates: over-optimisation under `mean` and `lcb:k`, and holistic vs
aspect-combined rewards (ALaRM) with the aspects chosen by their consistency with the holistic reward.

Holistic reward model (--holistic-dir): Bradley–Terry, trained on alpaca_eval pairs of instructions with
instruction_id < 500 (the first 192 pairs of bench/common.alpaca_pairs, as bench/haf_vs_bt.py's alpaca
run), with a Laplace posterior (`rewardstack laplace --prior val`, fitted on those pairs, prior chosen on
the next 64). Test pools: instructions with id ≥ 500 and id % --stride == 0, one output of each of the
16 GENERATORS (quality from 0.02 to 0.7 mean gold), gold = gold_winrate. Aspect rows (selection and
z-score calibration): instructions with id ≥ 500 and id % --stride == --stride // 2, two outputs of a
seeded draw of two GENERATORS. Aspects: `length` (words), `format` (a Markdown list or heading),
`harmless` (a Bradley–Terry model on hh_rlhf_harmless, --harmless-dir, MAP rewards). Each source scores
every row once; the library's objectives, estimator, normalisation and combination run on those scores.

    python bench/bon_alpaca.py --holistic-dir runs/alpaca/holistic/model --harmless-dir runs/alpaca/harmless/model
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from rewardstack.bon import Objective, plot_best_of_n, run_best_of_n
from rewardstack.data.encode import as_messages, prompt_key
from rewardstack.data.pools import Pool
from rewardstack.sources import Hierarchical, Normalized, RewardScores, build_source
from rewardstack.sources.select import aspect_consistency

from common import DATA

GENERATORS = ("oasst-sft-pythia-12b", "text_davinci_003", "falcon-7b-instruct", "alpaca-7b", "gpt4_gamed", "chatglm2-6b", "vicuna-7b",
              "baize-v2-13b", "wizardlm-13b", "gemma-7b-it", "Qwen-14B-Chat", "gpt-3.5-turbo-1106", "claude-2.1",
              "Mixtral-8x7B-Instruct-v0.1_concise", "FuseChat-Llama-3.2-3B-Instruct", "FuseChat-Gemma-2-9B-Instruct")
FORMAT = r"^\s*([-*] |\d+\. |#+ )"
OBJECTIVES = ("mean", "lcb:0.5", "lcb:1", "lcb:2", "lcb:4")
MODES = ("holistic", "aspects", "weighted_sum", "hierarchical")


class Precomputed:
    """A reward source answering from scores computed once: (prompt, response) → mean, std."""

    def __init__(self, prompts, responses, scores: RewardScores):
        self.index = {(prompt_key(p), r): i for i, (p, r) in enumerate(zip(prompts, responses))}
        self.scores = scores

    def score(self, prompts, responses, batch_size: int = 16) -> RewardScores:
        rows = [self.index[(prompt_key(p), r)] for p, r in zip(prompts, responses)]
        std = None if self.scores.std is None else self.scores.std[rows]
        return RewardScores(mean=self.scores.mean[rows], std=std)


def read_instructions(stride: int) -> tuple[list[Pool], list[tuple]]:
    """Test pools (id % stride == 0) and aspect rows (prompt, two responses; id % stride == stride // 2)."""
    outputs = defaultdict(dict)
    with gzip.open(DATA / "alpaca_eval" / "outputs.jsonl.gz", "rt") as handle:
        for line in handle:
            row = json.loads(line)
            if row["instruction_id"] >= 500 and row["instruction_id"] % stride in (0, stride // 2) and row["generator"] in GENERATORS \
                    and row["gold_winrate"] is not None and row["output"].strip():
                outputs[row["instruction_id"]].setdefault(row["generator"], row)
    pools, pairs, rng = [], [], random.Random(0)
    for instruction_id in sorted(outputs):
        rows = outputs[instruction_id]
        if len(rows) < len(GENERATORS):
            continue
        prompt = as_messages(rows[GENERATORS[0]]["instruction"])
        if instruction_id % stride == 0:
            pools.append(Pool(str(instruction_id), prompt, [rows[g]["output"] for g in GENERATORS], list(GENERATORS),
                              np.array([rows[g]["gold_winrate"] for g in GENERATORS]), group=rows[GENERATORS[0]]["dataset"]))
        else:
            first, second = rng.sample(GENERATORS, 2)
            pairs.append((prompt, rows[first]["output"], rows[second]["output"]))
    return pools, pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--holistic-dir", type=Path, required=True, help="alpaca_eval reward model with a posterior")
    parser.add_argument("--harmless-dir", type=Path, required=True, help="hh_rlhf_harmless reward model")
    parser.add_argument("--stride", type=int, default=8)
    parser.add_argument("--threshold", type=float, default=0.0, help="τ of the hierarchical mode (on the z-scored holistic reward)")
    parser.add_argument("--aspect-weight", type=float, default=0.5)
    parser.add_argument("--out", type=Path, default=Path("bench/results/bon_alpaca"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    pools, pairs = read_instructions(args.stride)
    prompts = [p.prompt for p in pools for _ in p.responses] + [prompt for prompt, _, _ in pairs for _ in range(2)]
    responses = [r for p in pools for r in p.responses] + [r for _, a, b in pairs for r in (a, b)]
    print(f"{len(pools)} test pools × {len(GENERATORS)} generators, {len(pairs)} aspect-selection prompts × 2 "
          f"(instruction_id ≥ 500, stride {args.stride}); {len(responses)} rows", flush=True)
    sources = {
        "holistic": {"kind": "model", "path": str(args.holistic_dir.resolve())},
        "harmless": {"kind": "model", "path": str(args.harmless_dir.resolve()), "posterior": False},
        "length": {"kind": "rule", "builtin": "length"},
        "format": {"kind": "rule", "builtin": "regex", "pattern": FORMAT},
    }
    cached, seconds = {}, {}
    for name, node in sources.items():
        cache = args.out / f"scores_{name}.npz"
        if cache.exists():
            saved = np.load(cache)
            cached[name] = RewardScores(mean=saved["mean"], std=saved["std"] if "std" in saved else None)
            seconds[name] = float(saved["seconds"])
        else:
            started = time.perf_counter()
            cached[name] = build_source(node).score(prompts, responses)
            seconds[name] = time.perf_counter() - started
            np.savez(cache, mean=cached[name].mean, seconds=seconds[name], **({} if cached[name].std is None else {"std": cached[name].std}))
        print(f"scored {name}: {seconds[name]:.0f} s", flush=True)
    test_rows = slice(0, sum(len(p.responses) for p in pools))
    aspect_rows = slice(test_rows.stop, len(responses))

    # mean vs lcb:k on the holistic model with its posterior
    holistic = Precomputed(prompts, responses, cached["holistic"])
    result = run_best_of_n(holistic, pools, [Objective.parse(o) for o in OBJECTIVES])
    plot_best_of_n(result, args.out / "bon_alpaca.png", "alpaca_eval best-of-n: mean vs lcb:k")
    std = cached["holistic"].std[test_rows]
    reward = cached["holistic"].mean[test_rows]
    print(f"\nholistic reward on test rows: spread (std over rows) {reward.std():.3f}, posterior std median {np.median(std):.3f} "
          f"(5–95 %: {np.percentile(std, 5):.3f}–{np.percentile(std, 95):.3f}); corr(std, gold) "
          f"{np.corrcoef(std, np.concatenate([p.gold for p in pools]))[0, 1]:.3f}")
    ns = result["n"]
    shown = [n for n in (1, 2, 4, 8, 16) if n <= ns[-1]]
    print(f"{'objective':<12}" + "".join(f"{'gold n=' + str(n):>11}" for n in shown) + "".join(f"{'proxy n=' + str(n):>12}" for n in shown))
    for name, curve in result["curves"].items():
        print(f"{name:<12}" + "".join(f"{curve['gold'][n - 1]:>11.3f}" for n in shown) + "".join(f"{curve['proxy'][n - 1]:>12.3f}" for n in shown))
    at_n = {name: np.array([r["objectives"][name]["gold"][-1] for r in result["pools"]]) for name in OBJECTIVES}
    print(f"gold at n={ns[-1]} minus mean's, over pools (± one standard error): "
          + ", ".join(f"{name} {np.mean(at_n[name] - at_n['mean']):+.3f} ± {np.std(at_n[name] - at_n['mean'], ddof=1) / np.sqrt(len(pools)):.3f}"
                      for name in OBJECTIVES[1:]))
    oracle = np.mean([p.gold.max() for p in pools])
    print(f"oracle (best gold in the pool) {oracle:.3f}; per-generator mean gold: "
          + ", ".join(f"{g} {np.mean([p.gold[i] for p in pools]):.2f}" for i, g in enumerate(GENERATORS)))

    # ALaRM: z-score every source on the aspect rows, keep aspects consistent with the holistic reward
    normalized = {}
    for name, scores in cached.items():
        calibration = scores.mean[aspect_rows]
        normalized[name] = Normalized(Precomputed(prompts, responses, RewardScores(mean=scores.mean)), calibration.mean(), calibration.std())
    as_pairs = {name: scores.mean[aspect_rows].reshape(-1, 2) for name, scores in cached.items()}
    print(f"\naspect consistency with the holistic reward ({len(pairs)} prompts, two responses each):")
    print(f"{'aspect':<10}{'compared':>9}{'inconsistency':>15}{'win rate':>10}")
    table = {name: aspect_consistency(as_pairs["holistic"], as_pairs[name]) for name in ("length", "format", "harmless")}
    for name, row in sorted(table.items(), key=lambda item: item[1]["inconsistency"]):
        print(f"{name:<10}{row['compared']:>9}{row['inconsistency']:>15.3f}{row['win_rate']:>10.3f}")
    selected = [name for name, row in table.items() if row["inconsistency"] <= 0.5]
    print(f"kept (inconsistency ≤ 0.5): {selected or 'none'}")
    print(f"\ngold of best-of-n, {'mode':<13}{'aspects':<28}" + "".join(f"{'n=' + str(n):>8}" for n in shown))
    for aspects in ([selected] if selected else []) + [["length", "format", "harmless"]]:
        for mode in MODES[aspects is not selected:]:  # holistic ignores the aspects: shown once
            source = Hierarchical(normalized["holistic"], {a: (normalized[a], args.aspect_weight) for a in aspects}, mode, args.threshold)
            curve = run_best_of_n(source, pools, [Objective.parse("mean")])["curves"]["mean"]["gold"]
            print(f"{'':<18}{mode:<13}{'+'.join(aspects):<28}" + "".join(f"{curve[n - 1]:>8.3f}" for n in shown))
    (args.out / "summary.json").write_text(json.dumps({"curves": result["curves"], "n": ns, "consistency": table, "selected": selected,
                                                       "seconds": seconds, "pools": [p.key for p in pools]}, indent=1))
    print(f"details: {args.out}")


if __name__ == "__main__":
    main()
