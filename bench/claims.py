"""Do the methods do what their papers claim, here? Paired experiments with intervals.

    python bench/claims.py --claim haf|laplace|alarm|laser|optimize [--seeds 0 1 2 3 4] [--quick] [--out bench/results/claims]

Every arm of a claim runs on the same data with the same seeds (a seed picks the training rows and their
order), so arms are compared run by run. Each finished run is appended to <out>/<claim>.jsonl (.jsonl.gz for
the large ones) with its per-item results; a rerun with the same settings skips the runs already there, so
an interrupted claim continues where it stopped. An effect is the mean difference between two arms over
seeds and test items; its 95 % interval is a paired bootstrap that resamples seeds and test items together
(both sources of noise), and its verdict is "holds" or "fails" when the interval excludes zero,
"inconclusive" when it spans zero. The report goes to the terminal, <out>/<claim>.md and <out>/<claim>.png.

Claims:
- laplace: best-of-n with the reward's lower confidence bound lcb:k (k chosen on validation problems)
  against its mean, on the policy's own samples of generated word problems with a verifiable answer:
  gold at the largest n, and the over-optimisation (gold lost between the peak and the largest n).
- haf: the HaF objective (reward head + token-level policy loss) against Bradley–Terry and DPO, on
  generated arithmetic pairs (rewardstack.synthetic): held-out pairs of the training world and of three
  shifted worlds (larger numbers, other templates, division). Accuracy of the reward head (bt, haf) or the
  implicit reward (dpo); haf's implicit reward reported beside. --policy-weights adds haf arms at other
  weights α of the policy loss (the haf arm keeps the library's default).
- alarm: ALaRM's combination modes (holistic, aspects, weighted_sum, hierarchical) on generated answers
  with style: a holistic reward model trained per seed, rule aspects of which one is wrong, selection by
  consistency on a split apart from the test; gold of best-of-n under a gated and an additive gold.
- laser: LASeR's bandit best-of-n with gold feedback on a mixture of three generated tasks where
  different members (a reward model, a format rule, length) are right: bandit against the best single member,
  a random member and the ensemble, with the regret curve and arm shares per task.
- optimize: LASeR in iterative preference optimisation on generated word problems, a good and a poor
  member: the bandit with gold feedback against the bandit with −loss feedback and the good member alone
  (and a random member, --optimize-random); greedy dev accuracy after each pass.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

BOOTSTRAP_SAMPLES = 4000


def paired_bootstrap(differences: np.ndarray, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0,
                     statistic: Callable[[np.ndarray], float] = np.mean) -> tuple[float, float, float]:
    """`statistic` (default: the mean) of a (seeds, items, …) array of paired differences and its 95 %
    percentile interval, resampling seeds and items with replacement in each of `samples` replicates."""
    rng = np.random.default_rng(seed)
    seeds, items = differences.shape[:2]
    values = np.empty(samples)
    for b in range(samples):
        rows, cols = rng.integers(seeds, size=seeds), rng.integers(items, size=items)
        values[b] = statistic(differences[rows][:, cols])
    low, high = np.percentile(values, [2.5, 97.5])
    return float(statistic(differences)), float(low), float(high)


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
    """The finished runs of a claim, one JSON line each, filtered to the current settings; gzip-compressed
    when the path ends in .gz (each run appended as its own gzip member)."""

    def __init__(self, path: Path, settings: dict):
        self.path, self.settings = path, settings
        self.open = gzip.open if path.suffix == ".gz" else open
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = self.open(path, "rt").read().splitlines() if path.exists() else []
        self.runs = [r for r in map(json.loads, filter(None, lines)) if r["settings"] == settings]

    def find(self, **key) -> dict | None:
        return next((r for r in self.runs if all(r.get(k) == v for k, v in key.items())), None)

    def add(self, record: dict) -> dict:
        record = {"settings": self.settings, **record}
        self.runs.append(record)
        with self.open(self.path, "at") as handle:
            handle.write(json.dumps(record) + "\n")
        return record


def pair_correct(chosen: np.ndarray, rejected: np.ndarray) -> list[float]:
    from rewardstack.metrics import tie_half_correct

    return tie_half_correct(np.asarray(chosen) - np.asarray(rejected)).tolist()


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
    weighted = {f"haf α={alpha:g}": {"objective": "haf", "policy_weight": alpha} for alpha in args.policy_weights}
    arms = {arm: {"objective": arm} for arm in HAF_ARMS} | weighted  # "haf" keeps the library's default α
    for seed in args.seeds:
        train_file = write_jsonl(arithmetic_pairs(args.pairs, seed=seed), work / f"train-{seed}.jsonl")
        for arm, objective in arms.items():
            if records.find(seed=seed, arm=arm):
                continue
            config = TrainConfig(model=args.model, max_length=128, lora_r=16, batch_size=8, learning_rate=args.learning_rate,
                                 seed=seed, ref_cache_dir=str(args.out / "reference-logprobs"), **objective)
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

    def accuracy(arm: str, worlds: tuple[str, ...], field: str = "correct") -> np.ndarray:
        """(seeds, items) correctness, the items of `worlds` side by side."""
        return np.array([sum((records.find(seed=s, arm=arm)[field][w] for w in worlds), []) for s in args.seeds])

    everywhere = tuple(WORLDS)
    effects = []
    for label, worlds in [(world, (world,)) for world in WORLDS] + [("all worlds", everywhere)]:
        comparisons = [("haf − bt", "haf", "correct", "bt"), ("dpo − bt", "dpo", "correct", "bt"), ("haf implicit − dpo", "haf", "implicit", "dpo")]
        if worlds == everywhere:  # the --policy-weights arms are compared over all worlds only
            comparisons += [row for arm in weighted for row in ((f"{arm} − bt", arm, "correct", "bt"), (f"{arm} − haf", arm, "correct", "haf"),
                                                                (f"{arm} implicit − dpo", arm, "implicit", "dpo"))]
        for name, arm, field, baseline in comparisons:
            a, b = accuracy(arm, worlds, field), accuracy(baseline, worlds)
            effects.append(Effect(f"{name}, {label}", *paired_bootstrap(a - b), len(args.seeds), a.shape[1]))
    table = {f"{arm}{' implicit' if field == 'implicit' else ''}": {w: float(accuracy(arm, (w,), field).mean()) for w in WORLDS}
             for arm, field in (("bt", "correct"), ("haf", "correct"), *((arm, "correct") for arm in weighted),
                                ("haf", "implicit"), ("dpo", "correct"))}
    seconds = sum(r["seconds"] for r in records.runs if r["seed"] in args.seeds)

    def plot(axis) -> None:
        width = 0.8 / len(table)
        for k, (arm, by_world) in enumerate(table.items()):
            axis.bar(np.arange(len(WORLDS)) + k * width, list(by_world.values()), width, label=arm)
        axis.set_xticks(np.arange(len(WORLDS)) + (len(table) - 1) / 2 * width, list(WORLDS))
        axis.set_ylabel("held-out pair accuracy")
        axis.set_ylim(0.4, 1.0)
        axis.legend(loc="lower left", ncols=4, fontsize=8)

    heads = ["bt", "haf", *weighted]
    pooled = {f"{arm}{' implicit' if field == 'implicit' else ''}": float(accuracy(arm, everywhere, field).mean())
              for arm, field in [(arm, "correct") for arm in heads] + [(arm, "implicit") for arm in heads[1:]] + [("dpo", "correct")]}
    per_seed = {arm: (accuracy(arm, everywhere) - accuracy("bt", everywhere)).mean(axis=1).tolist() for arm in heads[1:]}
    minutes = {arm: sum(r["seconds"] for r in records.runs if r["seed"] in args.seeds and r["arm"] == arm) / 60 for arm in arms}
    return effects, {"accuracy": table, "pooled": pooled, "per seed − bt": per_seed, "minutes per arm": minutes,
                     "seconds": seconds, "settings": settings, "seeds": args.seeds}, plot


# --- laplace ------------------------------------------------------------------------------------------

LCB_GRID = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)  # 0: lcb is the mean, so validation may reject the penalty
LCB_FAMILIES = ("lcb", "slcb")  # μ − k·σ, and μ − k·sd(μ)·σ/mean(σ) per pool (the std's scale taken out)


def rounded(values) -> list[float]:
    """Floats to 7 significant digits (a float32 reward's precision), to keep the records small."""
    return [float(f"{v:.7g}") for v in np.asarray(values, dtype=np.float64)]


def policy_pool_splits(args: argparse.Namespace) -> dict[str, tuple[int, int, int]]:
    """Word-problem splits sampled from the policy: name → (problems, largest number, generator seed)."""
    return {"train": (args.train_problems, 9, 1), "validation": (args.test_problems // 2, 9, 2),
            "test": (args.test_problems, 9, 3), "test, numbers to 30": (args.test_problems, 30, 4)}


def policy_pools(args: argparse.Namespace, name: str) -> list:
    """The policy's samples (temperature 0.7, seed 0; 8 per train problem, args.n otherwise) of one split
    of word problems, gold = the answer checked; sampled once and kept in <out>/laplace-pools/."""
    from rewardstack.data.pools import load_pools, load_prompts, write_pools
    from rewardstack.sampling import SamplingConfig, sample_pools
    from rewardstack.synthetic import word_problems

    count, largest, seed = policy_pool_splits(args)[name]
    n = 8 if name == "train" else args.n
    path = args.out / "laplace-pools" / f"{name.replace(' ', '_').replace(',', '')}-{count}-{n}.jsonl"
    if not path.exists():
        prompts, _ = load_prompts(word_problems(count, seed=1000 * seed, largest=largest))
        sampled, _ = sample_pools(args.model, prompts, SamplingConfig(n=n, temperature=0.7, max_new_tokens=40, seed=0))
        path.parent.mkdir(parents=True, exist_ok=True)
        write_pools(sampled, path)
    pools = load_pools(path)[0]
    print(f"{name}: {len(pools)} problems × {n} samples, policy accuracy {np.mean([p.gold.mean() for p in pools]):.3f}", flush=True)
    return pools


def train_on_policy_pairs(args: argparse.Namespace, pairs: list[dict], seed: int):
    """A Bradley–Terry reward model (LoRA r=16, lr 5e-4, one epoch) on gold pairs of the policy's samples."""
    from rewardstack.config import TrainConfig
    from rewardstack.data.load import Columns
    from rewardstack.training import train

    config = TrainConfig(model=args.model, max_length=128, lora_r=16, batch_size=8, learning_rate=5e-4, seed=seed, columns=Columns())
    return train(config, pairs)[0]


def laplace_claim(args: argparse.Namespace, work: Path) -> tuple[list[Effect], dict, Callable]:
    """Best-of-n on generated word problems with a verifiable answer, the policy's own samples as pools.
    Pools are sampled once (seed 0) and kept in <out>/laplace-pools/; a seed trains a BT reward model on
    gold pairs of the training problems' pools, fits the Laplace posterior (head, or LoRA + head) and
    records every response's reward and std. From them, on the validation problems, k of lcb:k and of
    slcb:k (the std rescaled to each pool's reward spread) is chosen from LCB_GRID by gold at the
    largest n; the test problems (in distribution, and with numbers up to 30) then compare each with mean."""
    from rewardstack.bayes import Laplace
    from rewardstack.bon import Objective, expected_best_of_n, score_pools
    from rewardstack.data.pools import gold_pairs
    from rewardstack.metrics import auroc
    from rewardstack.scores import RewardScores

    splits = policy_pool_splits(args)
    pools = {name: policy_pools(args, name) for name in splits}
    settings = {"train_problems": args.train_problems, "test_problems": args.test_problems, "n": args.n, "model": args.model}
    records = Records(args.out / "laplace.jsonl.gz", settings)  # about 60 KB per run compressed
    scored_splits = list(splits)[1:]

    def gold(run: dict, split: str, objective: Objective, ns: list[int]) -> np.ndarray:
        """(pools, len(ns)): the exact expected gold of best-of-n ranked by `objective`, from the run's scores."""
        return np.array([expected_best_of_n(objective.score(RewardScores(np.array(s["reward"]), np.array(s["std"]))), pool.gold, ns)
                         for s, pool in zip(run["scores"][split], pools[split])])

    for seed in args.seeds:
        model = None
        for subset in args.subsets:
            if records.find(seed=seed, subset=subset):
                continue
            started = time.perf_counter()
            pairs = gold_pairs(pools["train"], 6, seed)
            if model is None:  # one reward model per seed, each posterior fitted to it
                model = train_on_policy_pairs(args, pairs, seed)
            posterior = Laplace(model, subset=subset).fit(pairs).posterior
            scores = {split: [{"reward": rounded(s.mean), "std": rounded(s.std)} for s in score_pools(model, pools[split])[0]]
                      for split in scored_splits}
            seconds = time.perf_counter() - started
            run = records.add({"seed": seed, "subset": subset, "train_pairs": len(pairs), "prior_precision": posterior.prior_precision,
                               "scores": scores, "seconds": seconds})
            end = {split: {o.name: float(gold(run, split, o, [args.n]).mean()) for o in map(Objective, ("mean", "lcb"), (0, 1))}
                   for split in scored_splits}
            print(f"seed {seed} {subset}: gold at n={args.n}: {json.dumps(end)} ({seconds:.0f} s)", flush=True)

    def separation(run: dict, split: str, key: str, sign: float) -> float:
        """Mean, over the pools holding right and wrong responses, of the AUROC with which sign · `key`
        (reward or std) ranks the right responses above the wrong ones."""
        areas = []
        for s, pool in zip(run["scores"][split], pools[split]):
            right = pool.gold > 0.5
            if right.any() and not right.all():
                values = sign * np.array(s[key])
                areas.append(auroc(values[~right], values[right]))
        return float(np.mean(areas)) if areas else float("nan")

    def overoptimisation(curves: np.ndarray) -> float:
        """Gold lost between the peak of the mean curve and its largest n: max_n g(n) − g(N)."""
        mean_curve = curves.reshape(-1, curves.shape[-1]).mean(axis=0)
        return float(mean_curve.max() - mean_curve[-1])

    ns = list(range(1, args.n + 1))
    grid = {family: {k: Objective(family, k) if k else Objective("mean") for k in LCB_GRID} for family in LCB_FAMILIES}
    effects, table, fixed, prior, separations = [], {}, {}, {}, {}
    for subset in args.subsets:
        runs = [records.find(seed=s, subset=subset) for s in args.seeds]
        separations[subset] = {split: {label: float(np.mean([separation(run, split, key, sign) for run in runs]))
                                       for label, key, sign in (("reward", "reward", 1.0), ("−std", "std", -1.0))}
                               for split in scored_splits}
        fixed[subset] = {o.name: {split: [float(gold(run, split, o, [args.n]).mean()) for run in runs] for split in scored_splits}
                         for o in {o.name: o for by_k in grid.values() for o in by_k.values()}.values()}
        for name in scored_splits[1:]:
            mean = np.array([gold(run, name, Objective("mean"), ns) for run in runs])  # (seeds, pools, n)
            row = table[f"{subset}, {name}"] = {"mean": mean.mean(axis=(0, 1)).tolist()}
            for family in LCB_FAMILIES:
                chosen_k = [max(LCB_GRID, key=lambda k: fixed[subset][grid[family][k].name]["validation"][i]) for i in range(len(runs))]
                penalised = np.array([gold(run, name, grid[family][k], ns) for run, k in zip(runs, chosen_k)])
                both = np.stack([penalised, mean], axis=-1)
                effects.append(Effect(f"{subset} posterior: {family}:k* − mean, gold at n={args.n}, {name}",
                                      *paired_bootstrap(penalised[..., -1] - mean[..., -1]), len(runs), mean.shape[1]))
                effects.append(Effect(f"{subset} posterior: over-optimisation of mean − of {family}:k*, {name}",
                                      *paired_bootstrap(both, statistic=lambda a: overoptimisation(a[..., 1]) - overoptimisation(a[..., 0])),
                                      len(runs), mean.shape[1]))
                row[f"{family}:k*"], row[f"{family} k*"] = penalised.mean(axis=(0, 1)).tolist(), chosen_k
            row["std / spread"] = [float(np.median(np.concatenate([s["std"] for s in run["scores"][name]]))
                                         / np.median([np.std(s["reward"]) for s in run["scores"][name]])) for run in runs]
        prior[subset] = [run["prior_precision"] for run in runs]
    seconds = sum(run["seconds"] for run in records.runs if run["seed"] in args.seeds and run["subset"] in args.subsets)

    def plot(axis) -> None:
        for label, curves in table.items():
            line, = axis.plot(ns, curves["mean"], label=f"mean, {label}")
            for family, style in zip(LCB_FAMILIES, ("--", ":")):
                axis.plot(ns, curves[f"{family}:k*"], style, color=line.get_color(), label=f"{family}:k*, {label}")
        axis.set_xscale("log", base=2)
        axis.set_xlabel("n")
        axis.set_ylabel("expected gold of best-of-n")
        axis.legend(fontsize=7)

    return effects, {"curves": table, "fixed k": fixed, "prior precision": prior, "separation": separations, "seconds": seconds, "settings": settings, "seeds": args.seeds}, plot


# --- alarm --------------------------------------------------------------------------------------------

ALARM_ASPECTS = {  # name: (rule, sign); concise and stated carry real signal, preamble is wrong
    "concise": (r"words", -1.0),
    "stated": (r"The answer is -?\d+\.", 1.0),
    "preamble": (r"^(Let me|Good question|I will)", 1.0),
}
ALARM_MODES = ("holistic", "aspects", "weighted_sum", "hierarchical")
ALARM_WEIGHTS = (0.25, 0.5, 1.0, 2.0, 4.0)  # the tuned modes' grid, searched on the selection pools
ALARM_THRESHOLDS = (-0.5, 0.0, 0.5, 1.0)


def rule_scores(pools: list, aspect: str) -> list[np.ndarray]:
    """Each pool's rewards from a rule aspect of ALARM_ASPECTS (the word count or a regex, through the
    library's rule sources), times its sign."""
    from rewardstack.bon import score_pools
    from rewardstack.sources.rules import Rule, length_rule, regex_rule

    pattern, sign = ALARM_ASPECTS[aspect]
    rule = Rule(length_rule() if pattern == "words" else regex_rule(pattern), aspect)
    return [sign * s.mean for s in score_pools(rule, pools)[0]]


def alarm_curves(z: dict, split: str, pools: list, mode: str, aspects: list[str], weight: float, threshold: float) -> list[list[float]]:
    """Per pool, the exact expected gold of best-of-n (n = 1 … N) under combine_hierarchy of the z-scored
    holistic reward and `aspects`, each aspect with `weight`, w_h = 1, τ = `threshold`."""
    from rewardstack.bon import expected_best_of_n
    from rewardstack.sources.combine import combine_hierarchy

    ns = range(1, len(pools[0].gold) + 1)
    return [expected_best_of_n(combine_hierarchy(z["holistic"][split][i], np.array([z[a][split][i] for a in aspects] or np.zeros((0, len(pool.gold)))),
                                                 mode, threshold, 1.0, [weight] * len(aspects))[0], pool.gold, ns).tolist()
            for i, pool in enumerate(pools)]


def alarm_claim(args: argparse.Namespace, work: Path) -> tuple[list[Effect], dict, Callable]:
    """ALaRM on generated answers with style (synthetic.aspect_pools): a Bradley–Terry holistic reward
    trained per seed on arithmetic pairs (it learns correctness, not style), and three rule aspects:
    concise (−words) and stated ("The answer is N.") carry real signal, preamble (a filler sentence
    first) is wrong.
    All rewards are z-scored on the selection pools; aspects are kept when their inconsistency with the
    holistic reward on one random response pair per selection pool is ≤ 0.5 (a split apart from the
    test); modes combine with w_h = 1, every aspect w = 0.5, τ = 0, and ("tuned") with the aspect
    weight and τ that give the most gold at n = N on the selection pools (ALARM_WEIGHTS × ALARM_THRESHOLDS).
    Gold of best-of-n on the test pools, under a gated gold (style counts only for correct answers,
    ALaRM's premise) and an additive one."""
    from rewardstack.bon import score_pools
    from rewardstack.config import TrainConfig
    from rewardstack.data.pools import load_pools
    from rewardstack.sources.select import aspect_consistency
    from rewardstack.synthetic import ASPECT_GOLDS, aspect_pools, arithmetic_pairs, write_jsonl
    from rewardstack.training import train

    settings = {"pairs": args.pairs, "test_pools": args.test_pools, "selection_pools": args.selection_pools, "pool_size": args.pool_size,
                "max_length": 128, "lora_r": 16, "learning_rate": args.learning_rate, "model": args.model,
                "tuning": {"weights": list(ALARM_WEIGHTS), "thresholds": list(ALARM_THRESHOLDS)}}
    records = Records(args.out / "alarm.jsonl.gz", settings)
    pools = {split: {gold: load_pools(aspect_pools(count, args.pool_size, seed=seed, gold=gold))[0] for gold in ASPECT_GOLDS}
             for split, count, seed in (("test", args.test_pools, 20_000), ("selection", args.selection_pools, 30_000))}
    for seed in args.seeds:
        if records.find(seed=seed):
            continue
        started = time.perf_counter()
        config = TrainConfig(model=args.model, max_length=128, lora_r=16, batch_size=8, learning_rate=args.learning_rate, seed=seed)
        model, _ = train(config, write_jsonl(arithmetic_pairs(args.pairs, seed=seed), work / f"train-{seed}.jsonl"))
        raw = {"holistic": {split: [s.mean for s in score_pools(model, by_gold["gated"])[0]] for split, by_gold in pools.items()}}
        raw.update({a: {split: rule_scores(by_gold["gated"], a) for split, by_gold in pools.items()} for a in ALARM_ASPECTS})
        z = {}  # z-scores with the selection responses' mean and std
        for name, by_split in raw.items():
            values = np.concatenate(by_split["selection"])
            mean, std = values.mean(), values.std() or 1.0
            z[name] = {split: [((v - mean) / std).tolist() for v in scores] for split, scores in by_split.items()}
        rng = np.random.default_rng(seed)
        picks = [rng.choice(args.pool_size, size=2, replace=False) for _ in pools["selection"]["gated"]]
        consistency = {a: aspect_consistency(np.array([np.array(z["holistic"]["selection"][i])[p] for i, p in enumerate(picks)]),
                                             np.array([np.array(z[a]["selection"][i])[p] for i, p in enumerate(picks)]))
                       for a in ALARM_ASPECTS}
        kept = [a for a, c in consistency.items() if c["inconsistency"] <= 0.5]
        curves, tuned = {gold: {} for gold in ASPECT_GOLDS}, {gold: {} for gold in ASPECT_GOLDS}  # gold → "mode, aspects" → per-pool curve
        for gold in ASPECT_GOLDS:
            for aspects_label, aspects in (("selected", kept), ("all", list(ALARM_ASPECTS))):
                for mode in ALARM_MODES[aspects_label == "all":]:  # holistic ignores the aspects
                    curves[gold][f"{mode}, {aspects_label}"] = alarm_curves(z, "test", pools["test"][gold], mode, aspects, 0.5, 0.0)
            for mode in ("weighted_sum", "hierarchical"):
                grid = [(w, t) for w in ALARM_WEIGHTS for t in (ALARM_THRESHOLDS if mode == "hierarchical" else (0.0,))]
                w, t = max(grid, key=lambda wt: np.mean(alarm_curves(z, "selection", pools["selection"][gold], mode, kept, *wt), axis=0)[-1])
                tuned[gold][mode] = {"weight": w, "threshold": t}
                curves[gold][f"{mode}, selected, tuned"] = alarm_curves(z, "test", pools["test"][gold], mode, kept, w, t)
        seconds = time.perf_counter() - started
        records.add({"seed": seed, "consistency": consistency, "kept": kept, "tuned": tuned, "curves": curves, "z": z, "seconds": seconds})
        print(f"seed {seed}: kept {kept}; tuned {tuned}; gold at n={args.pool_size} (gated): "
              + ", ".join(f"{k} {np.mean(c, axis=0)[-1]:.3f}" for k, c in curves["gated"].items()) + f" ({seconds:.0f} s)", flush=True)

    runs = [records.find(seed=s) for s in args.seeds]

    def at_n(gold: str, label: str) -> np.ndarray:
        return np.array([run["curves"][gold][label] for run in runs])[..., -1]  # (seeds, pools)

    effects = []
    for gold in ASPECT_GOLDS:
        for name, a, b in (("hierarchical − holistic", "hierarchical, selected", "holistic, selected"),
                           ("hierarchical − weighted_sum", "hierarchical, selected", "weighted_sum, selected"),
                           ("weighted_sum − holistic", "weighted_sum, selected", "holistic, selected"),
                           ("aspects − holistic", "aspects, selected", "holistic, selected"),
                           ("hierarchical: selected − all aspects", "hierarchical, selected", "hierarchical, all"),
                           ("tuned hierarchical − holistic", "hierarchical, selected, tuned", "holistic, selected"),
                           ("tuned hierarchical − tuned weighted_sum", "hierarchical, selected, tuned", "weighted_sum, selected, tuned")):
            effects.append(Effect(f"{name}, gold at n={args.pool_size}, {gold} gold", *paired_bootstrap(at_n(gold, a) - at_n(gold, b)), len(runs), args.test_pools))
    labels = list(runs[0]["curves"]["gated"])
    table = {label: {gold: float(at_n(gold, label).mean()) for gold in ASPECT_GOLDS} for label in labels}
    selections = {"kept per seed": [run["kept"] for run in runs], "tuned per seed": [run["tuned"] for run in runs],
                  "inconsistency (mean over seeds)": {a: float(np.nanmean([run["consistency"][a]["inconsistency"] for run in runs])) for a in ALARM_ASPECTS}}
    seconds = sum(run["seconds"] for run in runs)

    def plot(axis) -> None:
        width = 0.1
        for k, label in enumerate(labels):
            axis.bar(np.arange(len(ASPECT_GOLDS)) + k * width, [table[label][g] for g in ASPECT_GOLDS], width, label=label)
        axis.set_xticks(np.arange(len(ASPECT_GOLDS)) + (len(labels) - 1) / 2 * width, [f"{g} gold" for g in ASPECT_GOLDS])
        axis.set_ylabel(f"gold of best-of-{args.pool_size}")
        axis.legend(fontsize=7, ncols=2)

    return effects, {"modes": table, "selection": selections, "seconds": seconds, "settings": settings, "seeds": args.seeds}, plot


# --- laser --------------------------------------------------------------------------------------------

class Cached:
    """A reward source answering from scores computed once: {(prompt text, response): reward}."""

    def __init__(self, rewards: dict[tuple[str, str], float]):
        self.rewards = rewards

    def score(self, prompts, responses, batch_size: int = 16):
        from rewardstack.scores import RewardScores
        from rewardstack.sources.rules import prompt_text

        return RewardScores(mean=np.array([self.rewards[prompt_text(p), r] for p, r in zip(prompts, responses)]))


def laser_claim(args: argparse.Namespace, work: Path) -> tuple[list[Effect], dict, Callable]:
    """LASeR best-of-n on a mixture of three tasks (synthetic.mixed_task_pools: plain, number only,
    explain) where different members are right: `arith` (a Bradley–Terry model trained once on
    arithmetic pairs, seed 0), `terse` (1 when the response is a bare number) and `length` (words). Each
    seed shows the pools in its own order to a bandit (LinUCB or linear Thompson sampling) on word-hash
    contexts with gold feedback (the gold of its member's pick at n = pool size); beside it each member
    alone, a random member and the z-scored ensemble mean, on the same pools. The members score every
    pool once; their scores are kept in <out>/laser-scores.jsonl for every bandit setting."""
    from rewardstack.bon import run_bandit_best_of_n, score_pools
    from rewardstack.config import TrainConfig
    from rewardstack.data.pools import load_pools
    from rewardstack.laser.context import ContextEncoder
    from rewardstack.laser.selector import BanditSelector
    from rewardstack.sources.rules import Rule, length_rule, prompt_text, regex_rule
    from rewardstack.synthetic import TASK_INSTRUCTIONS, arithmetic_pairs, mixed_task_pools, write_jsonl
    from rewardstack.training import train

    scoring = {"pairs": args.pairs, "per_task": args.per_task, "pool_size": args.pool_size, "max_length": 128, "lora_r": 16,
               "learning_rate": args.learning_rate, "model": args.model}
    settings = scoring | {"algorithm": args.algorithm, "exploration": args.exploration, "context_dim": args.context_dim}
    records, scored = Records(args.out / "laser.jsonl.gz", settings), Records(args.out / "laser-scores.jsonl", scoring)
    pools = load_pools(mixed_task_pools(args.per_task, args.pool_size, seed=40_000))[0]
    scores = scored.find(kind="member scores")  # shared by every bandit setting
    if scores is None:
        started = time.perf_counter()
        config = TrainConfig(model=args.model, max_length=128, lora_r=16, batch_size=8, learning_rate=args.learning_rate, seed=0)
        model, _ = train(config, write_jsonl(arithmetic_pairs(args.pairs, seed=0), work / "train.jsonl"))
        members = {"arith": model, "terse": Rule(regex_rule(r"^-?\d+$"), "terse"), "length": Rule(length_rule(), "length")}
        scores = {"kind": "member scores", "rewards": {name: [s.mean.tolist() for s in score_pools(member, pools)[0]] for name, member in members.items()}}
        scores["seconds"] = time.perf_counter() - started
        scored.add(scores)
        print(f"members scored {len(pools)} pools ({scores['seconds']:.0f} s)", flush=True)
    members = {name: Cached({(prompt_text(pool.prompt), r): v for pool, values in zip(pools, by_pool) for r, v in zip(pool.responses, values)})
               for name, by_pool in scores["rewards"].items()}
    for seed in args.seeds:
        if records.find(seed=seed):
            continue
        started = time.perf_counter()
        order = np.random.default_rng(seed).permutation(len(pools))
        exploration = {} if args.exploration is None else {"alpha" if args.algorithm == "linucb" else "scale": args.exploration}
        selector = BanditSelector(members, ContextEncoder("words", dim=args.context_dim), args.algorithm, seed=seed, **exploration)
        result = run_bandit_best_of_n(selector, [pools[i] for i in order])
        gold = {method: [r["objectives"][method]["gold"][-1] for r in result["pools"]] for method in result["pools"][0]["objectives"]}
        records.add({"seed": seed, "keys": [r["key"] for r in result["pools"]], "groups": [r["group"] for r in result["pools"]],
                     "arms": result["arms"], "gold": gold, "seconds": time.perf_counter() - started})
        print(f"seed {seed}: gold at n={args.pool_size}: " + ", ".join(f"{m} {np.mean(g):.3f}" for m, g in gold.items()), flush=True)

    runs = [records.find(seed=s) for s in args.seeds]
    keys = sorted(runs[0]["keys"])
    shown = [[keys.index(k) for k in run["keys"]] for run in runs]  # each seed's order, as indices into keys
    gold = {}  # method → (seeds, pools) gold at n = pool size, pools in key order
    for method in runs[0]["gold"]:
        gold[method] = np.empty((len(runs), len(keys)))
        for s, (run, order) in enumerate(zip(runs, shown)):
            gold[method][s, order] = run["gold"][method]
    late = np.zeros((len(runs), len(keys)), dtype=bool)  # pools shown in the second half of each order
    for s, order in enumerate(shown):
        late[s, order[len(keys) // 2:]] = True

    singles = [m for m in gold if m.startswith("only:")]
    best_single = max(singles, key=lambda m: gold[m].mean())
    effects = []
    for half, statistic in (("all", np.mean), ("late", np.nanmean)):
        for other in (best_single, "random", "ensemble"):
            name = f"bandit − {other}, gold at n={args.pool_size}, {'all pools' if half == 'all' else 'second half of each order'}"
            difference = gold["bandit"] - gold[other]
            if half == "late":
                difference = np.where(late, difference, np.nan)
            effects.append(Effect(name, *paired_bootstrap(difference, statistic=statistic), len(runs), len(keys)))
    groups = list(TASK_INSTRUCTIONS)
    group_of = dict(zip(runs[0]["keys"], runs[0]["groups"]))
    in_group = {g: np.array([group_of[k] == g for k in keys]) for g in groups}
    table = {m: {g: float(values[:, in_group[g]].mean()) for g in groups} | {"all": float(values.mean())} for m, values in gold.items()}
    shares = {g: {name: float(np.mean([arm == name for run in runs for arm, group in zip(run["arms"], run["groups"]) if group == g]))
                  for name in members} for g in groups}
    hindsight = np.max([gold[m] for m in singles], axis=0)  # (seeds, pools): per pool, the best member's gold

    def regret(method: str) -> np.ndarray:
        """Cumulative regret against the best member per pool, in each seed's order, averaged over seeds."""
        return np.mean([np.cumsum((hindsight[s] - gold[method][s])[order]) for s, order in enumerate(shown)], axis=0)

    seconds = scores["seconds"] + sum(run["seconds"] for run in runs)

    def plot(axis) -> None:
        for method in ("bandit", best_single, "random", "ensemble"):
            axis.plot(np.arange(1, len(keys) + 1), regret(method), "-" if method == "bandit" else "--", label=method)
        axis.set_xlabel("pools seen")
        axis.set_ylabel("cumulative regret vs the best member per pool")
        axis.legend(fontsize=8)

    return effects, {"methods": table, "arm shares": shares, "best single": best_single, "seconds": seconds,
                     "settings": settings, "seeds": args.seeds}, plot


# --- optimize -----------------------------------------------------------------------------------------

OPTIMIZE_ARMS = {"bandit, gold feedback": ("bandit", "gold"), "bandit, loss feedback": ("bandit", "loss"),
                 "single:arith": ("single:arith", "loss"), "random": ("random", "loss")}  # name → (selection, feedback)
OPTIMIZE_BATCH_PROMPTS = 4  # prompts per source choice and per update


def optimize_claim(args: argparse.Namespace, work: Path) -> tuple[list[Effect], dict, Callable]:
    """LASeR in iterative preference optimisation (`optimize`) with verifiable feedback. The policy
    (SmolLM2 + LoRA) learns from its own samples of generated word problems (numbers to 9, the answer
    checked). Members: `arith`, a Bradley–Terry model trained once (seed 0) on gold pairs of the policy's
    samples (the laplace claim's train pools): a good teacher; `length` (words): a poor one. Per seed (the
    prompt order, the samples, the bandit's draws; LoRA starts at zero, so every arm starts from the same
    policy): the bandit (LinUCB on word-hash contexts) with gold feedback and with −loss feedback, and
    `arith` alone (with --optimize-random also a random member per prompt). Greedy accuracy on held-out
    problems after each pass, compared per seed and problem."""
    from rewardstack.data.pools import gold_pairs, load_prompts
    from rewardstack.laser.context import ContextEncoder
    from rewardstack.laser.optimize import OptimizeConfig, Optimizer
    from rewardstack.laser.selector import BanditSelector
    from rewardstack.model import RewardModel
    from rewardstack.sources.rules import Rule, length_rule
    from rewardstack.synthetic import word_problems

    settings = {"train_problems": args.train_problems, "prompts": args.optimize_prompts, "batch_prompts": OPTIMIZE_BATCH_PROMPTS, "dev": args.dev_problems,
                "iterations": args.iterations, "learning_rate": args.policy_learning_rate, "context_dim": args.context_dim, "model": args.model}
    records = Records(args.out / "optimize.jsonl", settings)
    prompts = load_prompts(word_problems(args.optimize_prompts, seed=5000))[0]
    dev = {"dev": load_prompts(word_problems(args.dev_problems, seed=6000))[0]}
    arms = {name: arm for name, arm in OPTIMIZE_ARMS.items() if name != "random" or args.optimize_random}
    members = None
    for seed in args.seeds:
        for arm, (selection, feedback) in arms.items():
            if records.find(seed=seed, arm=arm):
                continue
            if members is None:
                arith_dir = args.out / f"optimize-arith-{args.train_problems}"
                if not arith_dir.exists():
                    train_on_policy_pairs(args, gold_pairs(policy_pools(args, "train"), 6, 0), 0).save(arith_dir)
                members = {"arith": RewardModel.from_pretrained(arith_dir), "length": Rule(length_rule(), "length")}
            started = time.perf_counter()
            selector = BanditSelector(members, ContextEncoder("words", dim=args.context_dim), "linucb", seed=seed)
            config = OptimizeConfig(policy=args.model, selection=selection, feedback=feedback, iterations=args.iterations,
                                    batch_prompts=OPTIMIZE_BATCH_PROMPTS, n=4, max_new_tokens=40, max_length=128, learning_rate=args.policy_learning_rate, seed=seed)
            history = Optimizer(selector, config, work / f"{seed}-{arm}").run(prompts, dev)
            took = time.perf_counter() - started
            records.add({"seed": seed, "arm": arm, "history": history, "seconds": took})
            print(f"seed {seed} {arm}: dev accuracy " + " → ".join(f"{h['accuracy']['dev']:.3f}" for h in history) + f" ({took:.0f} s)", flush=True)

    runs = {arm: [records.find(seed=s, arm=arm) for s in args.seeds] for arm in arms}
    correct = {arm: np.array([[h["dev_correct"]["dev"] for h in run["history"]] for run in arm_runs], dtype=float)  # (seeds, passes + 1, dev)
               for arm, arm_runs in runs.items()}
    final = {arm: values[:, -1] for arm, values in correct.items()}
    effects = [Effect(f"bandit, gold feedback − {other}, dev accuracy after {args.iterations} passes",
                      *paired_bootstrap(final["bandit, gold feedback"] - final[other]), len(args.seeds), args.dev_problems)
               for other in arms if other != "bandit, gold feedback"]
    effects += [Effect(f"{arm} − start, dev accuracy", *paired_bootstrap(values[:, -1] - values[:, 0]), len(args.seeds), args.dev_problems)
                for arm, values in correct.items()]
    table = {}
    for arm, arm_runs in runs.items():
        counts = {verdict: sum(c[verdict] for run in arm_runs for h in run["history"][1:] for c in h["gold_pairs"].values())
                  for verdict in ("agree", "disagree", "neither")}
        total = max(1, sum(counts.values()))
        table[arm] = {f"pass {i}" if i else "start": float(correct[arm][:, i].mean()) for i in range(args.iterations + 1)} | \
                     {"pairs right over wrong": counts["agree"] / total, "pairs wrong over right": counts["disagree"] / total}
    bandits = [arm for arm in arms if OPTIMIZE_ARMS[arm][0] == "bandit"]
    names = sorted({name for arm in bandits for run in runs[arm] for h in run["history"][1:] for name in h["arms"]})
    shares = {f"{arm}, pass {i}": {name: float(np.mean([run["history"][i]["arms"].get(name, 0) / sum(run["history"][i]["arms"].values())
                                                         for run in runs[arm]])) for name in names}
              for arm in bandits for i in range(1, args.iterations + 1)}
    seconds = sum(run["seconds"] for arm_runs in runs.values() for run in arm_runs)

    def plot(axis) -> None:
        for arm in arms:
            axis.plot(range(args.iterations + 1), correct[arm].mean(axis=(0, 2)), marker="o", label=arm)
        axis.set_xlabel("passes over the training prompts")
        axis.set_ylabel("greedy dev accuracy")
        axis.legend(fontsize=8)

    return effects, {"methods": table, "arm shares": shares, "seconds": seconds, "settings": settings, "seeds": args.seeds}, plot


CLAIMS = {"haf": haf_claim, "laplace": laplace_claim, "alarm": alarm_claim, "laser": laser_claim, "optimize": optimize_claim}


def report(claim: str, effects: list[Effect], extra: dict, plot: Callable, out: Path, command: str) -> str:
    """The effect table in Markdown (also written to out/<claim>.md) and the plot (out/<claim>.png)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = [f"### {claim}", "", f"`{command}`", "", f"Settings: {json.dumps(extra['settings'])}; seeds {extra['seeds']}.", "",
             "| effect | mean | 95 % interval | verdict | items | seeds |", "|---|---|---|---|---|---|"]
    lines += [e.row() for e in effects]
    if "curves" in extra:
        lines += ["", f"| posterior, test set | gold at n=1 | mean: peak (n) | mean at n={len(next(iter(extra['curves'].values()))['mean'])} | "
                  "penalised at the largest n (k* per seed) | std / spread per seed |", "|---|---|---|---|---|---|"]
        for label, c in extra["curves"].items():
            peak = int(np.argmax(c["mean"]))
            penalised = "; ".join(f"{family}:k* {c[f'{family}:k*'][-1]:.3f} ({', '.join(f'{k:g}' for k in c[f'{family} k*'])})" for family in LCB_FAMILIES)
            lines.append(f"| {label} | {c['mean'][0]:.3f} | {c['mean'][peak]:.3f} ({peak + 1}) | {c['mean'][-1]:.3f} | {penalised} | "
                         + ", ".join(f"{v:.2f}" for v in c["std / spread"]) + " |")
        for subset, by_objective in extra["fixed k"].items():
            splits = list(next(iter(by_objective.values())))
            lines += ["", f"Every fixed objective, {subset} posterior (descriptive: k is chosen on validation only); gold at the largest n, "
                      "mean over seeds. Prior precision per seed: " + ", ".join(f"{p:.3g}" for p in extra["prior precision"][subset]) + ".",
                      "", "| objective | " + " | ".join(splits) + " |", "|---|" + "---|" * len(splits)]
            lines += [f"| {name} | " + " | ".join(f"{np.mean(v):.3f}" for v in by_split.values()) + " |" for name, by_split in by_objective.items()]
        lines += ["", "Right above wrong within a pool: the AUROC of the reward and of −std, mean over the pools holding both "
                  "and over seeds.", "", "| posterior, set | reward | −std |", "|---|---|---|"]
        lines += [f"| {subset}, {split} | {by_score['reward']:.3f} | {by_score['−std']:.3f} |"
                  for subset, by_split in extra["separation"].items() for split, by_score in by_split.items()]
    for key, row_name in (("modes", "mode, aspects"), ("methods", "method")):
        if key in extra:
            columns = list(next(iter(extra[key].values())))
            lines += ["", f"| {row_name} | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
            lines += [f"| {name} | " + " | ".join(f"{v:.3f}" for v in values.values()) + " |" for name, values in extra[key].items()]
    if "selection" in extra:
        lines += ["", "Aspects kept per seed: " + "; ".join(", ".join(kept) or "none" for kept in extra["selection"]["kept per seed"]) + ". "
                  "Inconsistency with the holistic reward (mean over seeds): "
                  + ", ".join(f"{a} {v:.3f}" for a, v in extra["selection"]["inconsistency (mean over seeds)"].items()) + ".",
                  "", "Tuned on the selection pools, per seed (aspect weight w, threshold τ): "
                  + "; ".join(", ".join(f"{gold} {mode} w={c['weight']:g}" + (f" τ={c['threshold']:g}" if mode == "hierarchical" else "")
                                        for gold, by_mode in tuned.items() for mode, c in by_mode.items())
                              for tuned in extra["selection"]["tuned per seed"]) + "."]
    if "arm shares" in extra:
        names = list(next(iter(extra["arm shares"].values())))
        if "best single" in extra:
            lines += ["", f"Best single member in hindsight: {extra['best single']}."]
        lines += ["", "The bandit's arm shares (all seeds):", "", "| prompts | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        lines += [f"| {task} | " + " | ".join(f"{v:.2f}" for v in shares.values()) + " |" for task, shares in extra["arm shares"].items()]
    if "accuracy" in extra:
        worlds = list(next(iter(extra["accuracy"].values())))
        lines += ["", "| arm | " + " | ".join(worlds) + " |", "|---|" + "---|" * len(worlds)]
        lines += [f"| {arm} | " + " | ".join(f"{v:.3f}" for v in by_world.values()) + " |" for arm, by_world in extra["accuracy"].items()]
        lines += ["", "All worlds pooled, mean over seeds: " + ", ".join(f"{arm} {v:.3f}" for arm, v in extra["pooled"].items()) + ".",
                  "", "All worlds pooled, arm − bt per seed: "
                  + "; ".join(f"{arm} " + ", ".join(f"{d:+.3f}" for d in diffs) for arm, diffs in extra["per seed − bt"].items()) + ".",
                  "", "Minutes of runs per arm: " + ", ".join(f"{arm} {m:.1f}" for arm, m in extra["minutes per arm"].items()) + "."]
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
    parser.add_argument("--policy-weights", type=float, nargs="*", default=[],
                        help="haf: more haf arms at these policy-loss weights α (the haf arm keeps the default, 0.2)")
    parser.add_argument("--learning-rate", type=float, default=2e-4, help="the reward models' learning rate (haf: of all three objectives)")
    parser.add_argument("--train-problems", type=int, default=48, help="laplace: problems whose pools train the reward model")
    parser.add_argument("--test-problems", type=int, default=96, help="laplace: test problems per world (validation: half as many)")
    parser.add_argument("--n", type=int, default=32, help="laplace: samples per test problem (best-of-n up to n)")
    parser.add_argument("--subsets", nargs="+", default=["head"], choices=["head", "all"],
                        help="laplace: posteriors compared (all: LoRA + head, about 3× the time of head on this CPU)")
    parser.add_argument("--test-pools", type=int, default=160, help="alarm: test pools")
    parser.add_argument("--selection-pools", type=int, default=64, help="alarm: pools whose response pairs select the aspects")
    parser.add_argument("--pool-size", type=int, default=8, help="alarm, laser: responses per pool")
    parser.add_argument("--per-task", type=int, default=120, help="laser: pools per task (three tasks)")
    parser.add_argument("--algorithm", choices=["linucb", "thompson"], default="linucb", help="laser: the bandit")
    parser.add_argument("--exploration", type=float, help="laser: LinUCB's α or linear Thompson sampling's scale v (default: the library's, 1 and 0.5)")
    parser.add_argument("--context-dim", type=int, default=32, help="laser, optimize: hash buckets of the word context")
    parser.add_argument("--optimize-prompts", type=int, default=32, help="optimize: training prompts (word problems)")
    parser.add_argument("--dev-problems", type=int, default=64, help="optimize: held-out problems, greedy accuracy")
    parser.add_argument("--iterations", type=int, default=2, help="optimize: passes over the training prompts")
    parser.add_argument("--optimize-random", action="store_true", help="optimize: also a random member per prompt (5 more runs, about 30 min)")
    parser.add_argument("--policy-learning-rate", type=float, default=1e-4, help="optimize: the policy's learning rate")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--out", type=Path, default=Path("bench/results/claims"))
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.pairs, args.test_pairs, args.train_problems, args.test_problems, args.n = args.seeds[:2], 32, 24, 8, 8, 4
        args.test_pools, args.selection_pools, args.per_task, args.optimize_prompts, args.dev_problems, args.iterations = 12, 12, 8, 8, 8, 1
    command = "python bench/claims.py " + " ".join(sys.argv[1:])
    with tempfile.TemporaryDirectory(prefix="claims-") as work:
        effects, extra, plot = CLAIMS[args.claim](args, Path(work))
    print(report(args.claim, effects, extra, plot, args.out, command))


if __name__ == "__main__":
    main()
