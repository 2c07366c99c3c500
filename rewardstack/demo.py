"""The main job on the embedded default: best-of-n with a proxy reward model against a verifiable gold.

1. generate arithmetic word problems with known answers (synthetic.word_problems);
2. sample n responses per problem from the policy; gold = whether a response's final number is right;
3. label preference pairs (a right answer over a wrong one) on the first `train_prompts` problems and
   train a reward model on them (HaF by default);
4. fit its Laplace posterior (the reward head's by default), so every reward has a standard deviation;
5. evaluate it on pairs of the held-out problems, and run best-of-n on their samples with the `mean` and
   `lcb` objectives, against random choice (n = 1) and the oracle that knows the gold;
6. write runs/demo/: data/ (problems, samples, pairs), run/ (the trained model with its posterior),
   eval.json, reliability.png, subsets.png and std_vs_error.png (the reward model on held-out pairs),
   results.jsonl and summary.json (best-of-n), best_of_n.png and report.md.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .bayes import Laplace
from .bon import Objective, expected_best_of_n, format_best_of_n, run_best_of_n, write_best_of_n
from .config import TrainConfig
from .data.load import Columns
from .data.pools import gold_pairs, load_prompts, write_pools
from .errors import UserError, require
from .evaluation import evaluate, format_table, plot_evaluation
from .files import check_output_dir, mark_output_dir, write_json, write_text
from .options import option
from .sampling import SamplingConfig, sample_pools
from .synthetic import word_problems, write_jsonl
from .training import train


@dataclass
class DemoConfig:
    """Options of `rewardstack demo`."""

    model: str = option("smollm2-135m", "Policy and reward-model backbone")
    train_prompts: int = option(24, "Generated problems whose samples train the reward model")
    bon_prompts: int = option(20, "Held-out problems for evaluation and best-of-n")
    n: int = option(12, "Samples per problem")
    pairs_per_prompt: int = option(6, "Preference pairs drawn per training problem (a right answer over a wrong one)")
    objective: str = option("haf", "Reward-model objective: bt or haf")
    laplace_subset: str = option("head", "Posterior over the reward head (head: cheap enough for the 10-minute budget) or the LoRA weights too (all)")
    max_new_tokens: int = option(40, "Tokens per sampled answer at most")
    lcb: tuple[float, ...] = option((1.0, 2.0), "k of the lcb:k best-of-n objectives (mean − k·std)")
    seed: int = option(0, "Random seed")

    def __post_init__(self) -> None:
        for name in ("train_prompts", "bon_prompts", "pairs_per_prompt", "max_new_tokens"):
            require(self, name, getattr(self, name) >= 1, "at least 1")
        require(self, "n", self.n >= 2, "at least 2 (pairs need a right and a wrong answer)")
        require(self, "objective", self.objective in ("bt", "haf"), "bt or haf")
        require(self, "laplace_subset", self.laplace_subset in ("head", "all"), "head or all")


HELD_OUT = "held-out pairs"


def run_demo(output_dir: str | Path, config: DemoConfig = DemoConfig()) -> dict:
    """Run the whole job (module docstring), print the report and return the summary (output_dir/summary.json)."""
    started = time.perf_counter()
    output_dir = Path(output_dir)
    check_output_dir(output_dir, "--output-dir", "demo")
    mark_output_dir(output_dir, "demo")
    data_dir, run_dir = output_dir / "data", output_dir / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    problems = word_problems(config.train_prompts + config.bon_prompts, config.seed)
    write_jsonl(problems, data_dir / "problems.jsonl")
    print(f"demo: {config.train_prompts} + {config.bon_prompts} generated word problems, {config.n} samples each from {config.model}")

    prompts, _ = load_prompts(problems)
    sampling = SamplingConfig(n=config.n, temperature=0.7, max_new_tokens=config.max_new_tokens, seed=config.seed)
    pools, unfinished = sample_pools(config.model, prompts, sampling)
    write_pools(pools, data_dir / "pools.jsonl")
    train_pools, bon_pools = pools[: config.train_prompts], pools[config.train_prompts :]
    policy_accuracy = float(np.mean([pool.gold.mean() for pool in pools]))
    train_pairs = gold_pairs(train_pools, config.pairs_per_prompt, config.seed)
    test_pairs = gold_pairs(bon_pools, config.pairs_per_prompt, config.seed + 1)
    write_jsonl(train_pairs, data_dir / "train_pairs.jsonl")  # for the reader; the run below uses the lists in memory
    write_jsonl(test_pairs, data_dir / "test_pairs.jsonl")
    if not train_pairs:
        raise UserError(f"demo: no training pairs — no problem got both a right and a wrong answer from {config.model}")
    print(f"policy accuracy {policy_accuracy:.3f} per sample; {len(train_pairs)} training pairs, "
          f"{len(test_pairs)} held-out pairs; {unfinished} samples cut at {config.max_new_tokens} tokens")

    train_config = TrainConfig(
        model=config.model, objective=config.objective, max_length=128, lora_r=16, epochs=1, batch_size=8,
        learning_rate=5e-4, seed=config.seed, columns=Columns(),
    )
    reward_model, _ = train(train_config, train_pairs, output_dir=run_dir)
    posterior = Laplace(reward_model, subset=config.laplace_subset).fit(train_pairs).posterior
    posterior.save(run_dir / "model")

    evaluation = evaluate(reward_model, {HELD_OUT: test_pairs}, per_row=True) if test_pairs else {}
    plots = [path.name for path in plot_evaluation(evaluation, output_dir)] if test_pairs else []
    for metrics in evaluation.values():
        metrics.pop("per_row")
    write_json(output_dir / "eval.json", evaluation)
    objectives = [Objective("mean")] + [Objective("lcb", k) for k in config.lcb]
    result = run_best_of_n(reward_model, bon_pools, objectives)
    ns = result["n"]
    result["curves"]["oracle"] = {"gold": np.mean([expected_best_of_n(p.gold, p.gold, ns) for p in bon_pools], axis=0).tolist()}
    summary = write_best_of_n(
        result, output_dir, f"best-of-n on {len(bon_pools)} held-out word problems",
        demo=asdict(config), policy_accuracy=policy_accuracy, unfinished_samples=unfinished,
        train_pairs=len(train_pairs), prior_precision=posterior.prior_precision,
        reward_model=evaluation.get(HELD_OUT), seconds=time.perf_counter() - started,
    )
    report = _report(summary, format_table(evaluation) if evaluation else "no held-out pairs: no held-out problem got both a right and a wrong answer", plots)
    write_text(output_dir / "report.md", report)
    print(report)
    return summary


def _report(summary: dict, eval_table: str, plots: list[str]) -> str:
    """report.md: the task, the reward model's held-out accuracy and its plots (evaluation.plot_evaluation),
    and gold accuracy of best-of-n per n."""
    demo, rm, ns = summary["demo"], summary["reward_model"], summary["n"]
    gold_table = format_best_of_n({"n": ns, "curves": {name: {"gold": c["gold"]} for name, c in summary["curves"].items()}})
    best_n = {name: ns[int(np.argmax(c["gold"]))] for name, c in summary["curves"].items() if name != "oracle"}
    lines = [
        "# rewardstack demo",
        "",
        f"Policy {demo['model']}: {demo['n']} samples for each of {demo['train_prompts'] + demo['bon_prompts']} generated "
        f"word problems, {summary['policy_accuracy']:.1%} of them right. Reward model: {demo['objective']} objective, "
        f"LoRA r=16, trained on {summary['train_pairs']} pairs (a right answer over a wrong one) from the first "
        f"{demo['train_prompts']} problems; Laplace posterior over "
        f"{'the reward head' if demo['laplace_subset'] == 'head' else 'the LoRA weights and reward head'} with prior precision "
        f"{summary['prior_precision']:.3g}.",
        "",
        "## Reward model on held-out pairs",
        "",
        "```",
        eval_table,
        "```",
        "",
        *[f"![{name.removesuffix('.png')}]({name})" for name in plots],
        "",
        f"## Best-of-n on the {demo['bon_prompts']} held-out problems: gold accuracy",
        "",
        "n = 1 is random choice among the samples; `oracle` picks a right answer whenever one of the n is right.",
        "",
        "```",
        gold_table,
        "```",
        "",
        "Best n per objective: " + ", ".join(f"{name} n={n}" for name, n in best_n.items()) + ".",
        (f"Reward-model pair accuracy {rm['accuracy']:.3f}" if rm else "No held-out pairs")
        + (f" (Laplace predictive NLL {rm['laplace']['nll']:.3f} vs MAP {rm['nll']:.3f})" if rm and "laplace" in rm else "")
        + f". Total time {summary['seconds'] / 60:.1f} min.",
        "",
        "![best-of-n](best_of_n.png)",
        "",
    ]
    return "\n".join(lines)
