"""`rewardstack` command line: parse options, call the library, print results.

User errors print one line on stderr and exit with code 2."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

try:  # typer ships its own copy of click from 0.2x on
    from typer._click import exceptions as click_exceptions
except ImportError:
    from click import exceptions as click_exceptions

from .errors import UserError
from .files import atomic_path, check_output_dir, check_output_file, describe_os_error, mark_output_dir, write_json, write_text

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, help="Reward models for LLM alignment.")

# Options shared by the commands that read preference data.
PromptKey = Annotated[Optional[str], typer.Option(help="Column of the prompt (absent: implicit prompt) [default: prompt]")]
ChosenKey = Annotated[Optional[str], typer.Option(help="Column of the preferred response or dialogue [default: chosen]")]
RejectedKey = Annotated[Optional[str], typer.Option(help="Column of the other response or dialogue [default: rejected]")]
MarginKey = Annotated[Optional[str], typer.Option(help="Optional column of per-pair margins [default: margin]")]
SubsetKey = Annotated[Optional[str], typer.Option(help="Optional column to break evaluation down by [default: subset]")]
Split = Annotated[Optional[str], typer.Option(help="Split of a Hugging Face dataset name [default: train]")]
SkipInvalid = Annotated[Optional[bool], typer.Option("--skip-invalid", help="Count and skip invalid rows instead of stopping")]
# Options shared by the commands that score rows.
BatchSize = Annotated[int, typer.Option(min=1, help="Sequences per forward pass")]
AllowRuleModule = Annotated[Optional[list[str]], typer.Option(
    "--allow-rule-module", help="A module (with its submodules) that `module:function` rules may import besides those beside the tree; repeatable")]
RowPromptKey = Annotated[str, typer.Option(help="Column of the prompt")]
RowResponseKey = Annotated[str, typer.Option(help="Column of the response")]


def _columns(**values):
    from .config import from_dict
    from .data.load import Columns

    return from_dict(Columns, {k: v for k, v in values.items() if v is not None}, "options")


@app.command()
def train(
    data: Annotated[str, typer.Option(help="Training pairs: .jsonl[.gz], .json, .parquet, .csv or a Hugging Face dataset")],
    output_dir: Annotated[Path, typer.Option(help="Run directory: config, metrics, checkpoints, model, summary")],
    eval_data: Annotated[Optional[list[str]], typer.Option(help="Held-out pairs, evaluated during and after training (repeatable)")] = None,
    config: Annotated[Optional[Path], typer.Option(help="YAML file of training options; flags override it")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --output-dir from its newest checkpoint")] = False,
    model: Annotated[Optional[str], typer.Option(help="Backbone: smollm2-135m, tiny-random, a local path or Hugging Face id [default: smollm2-135m]")] = None,
    max_length: Annotated[Optional[int], typer.Option(help="Max tokens of prompt + response; longer pairs are truncated and counted [default: 512]")] = None,
    max_prompt_length: Annotated[Optional[int], typer.Option(help="Tokens a long prompt keeps at least [default: max_length / 2]")] = None,
    lora_r: Annotated[Optional[int], typer.Option(help="LoRA rank; 0 trains all backbone weights [default: 16]")] = None,
    lora_alpha: Annotated[Optional[int], typer.Option(help="LoRA alpha [default: 32]")] = None,
    lora_dropout: Annotated[Optional[float], typer.Option(help="LoRA dropout [default: 0.0]")] = None,
    lora_target_modules: Annotated[Optional[str], typer.Option(help="Comma-separated module names or all-linear [default: all-linear]")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Passes over the data [default: 1]")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Pairs per optimizer step, over all processes [default: 8]")] = None,
    micro_batch_size: Annotated[Optional[int], typer.Option(help="Pairs per forward pass per process; gradients accumulate [default: 8]")] = None,
    learning_rate: Annotated[Optional[float], typer.Option(help="Peak learning rate of AdamW [default: 1e-4]")] = None,
    weight_decay: Annotated[Optional[float], typer.Option(help="AdamW weight decay [default: 0.0]")] = None,
    warmup_ratio: Annotated[Optional[float], typer.Option(help="Share of steps with linear warm-up [default: 0.03]")] = None,
    lr_scheduler: Annotated[Optional[str], typer.Option(help="linear, cosine or constant [default: linear]")] = None,
    max_grad_norm: Annotated[Optional[float], typer.Option(help="Gradient clipping norm, 0 = off [default: 1.0]")] = None,
    objective: Annotated[Optional[str], typer.Option(help="bt (reward head), haf (reward head + token-level policy loss) or dpo (policy loss alone) [default: bt]")] = None,
    beta: Annotated[Optional[float], typer.Option(help="β of the policy loss and the implicit reward [default: 0.1]")] = None,
    policy_loss: Annotated[Optional[str], typer.Option(help="sigmoid, ipo, hinge or simpo [default: sigmoid]")] = None,
    reward_weight: Annotated[Optional[float], typer.Option(help="λ: weight of the Bradley–Terry loss under haf [default: 1.0]")] = None,
    policy_weight: Annotated[Optional[float], typer.Option(help="α: weight of the policy loss under haf [default: 0.2]")] = None,
    simpo_gamma: Annotated[Optional[float], typer.Option(help="γ margin of the simpo policy loss [default: 0.5]")] = None,
    ref_cache_dir: Annotated[Optional[str], typer.Option(help="Also cache reference log-probabilities on disk here")] = None,
    center_rewards_coefficient: Annotated[Optional[float], typer.Option(help="c in the centering term c·(r_c + r_r)² [default: 0.0]")] = None,
    eval_every: Annotated[Optional[int], typer.Option(help="Steps between evaluations, 0 = at the end only [default: 0]")] = None,
    save_every: Annotated[Optional[int], typer.Option(help="Steps between checkpoints, 0 = none [default: 0]")] = None,
    keep_checkpoints: Annotated[Optional[int], typer.Option(help="Newest checkpoints kept [default: 2]")] = None,
    eval_batch_size: Annotated[Optional[int], typer.Option(help="Sequences per forward pass in evaluation [default: 16]")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Random seed [default: 42]")] = None,
    prompt_key: PromptKey = None,
    chosen_key: ChosenKey = None,
    rejected_key: RejectedKey = None,
    margin_key: MarginKey = None,
    subset_key: SubsetKey = None,
    split: Split = None,
    skip_invalid: SkipInvalid = None,
):
    """Train a reward model: Bradley–Terry, the HaF hybrid objective, or DPO."""
    options = dict(locals())
    from .config import TrainConfig, load_config
    from .evaluate import format_table
    from .train import train as run_training

    columns = {k: options.pop(k) for k in ("prompt_key", "chosen_key", "rejected_key", "margin_key", "subset_key", "split")}
    for key in ("data", "output_dir", "eval_data", "config", "resume"):
        options.pop(key)
    cfg = load_config(TrainConfig, config, {**options, "columns": columns})
    summary = run_training(cfg, data, output_dir, eval_data or [], resume=resume)
    if summary:
        train_info = summary["train"]
        typer.echo(
            f"trained {summary['steps']} steps on {train_info['pairs']} pairs "
            f"({train_info['truncated']} truncated, {sum(train_info['skipped'].values())} skipped) "
            f"at {summary['tokens_per_second']:.0f} tokens/s; model in {output_dir / 'model'}"
        )
        if summary["eval"]:
            typer.echo(format_table(summary["eval"]))


@app.command("eval")
def eval_command(
    reward: Annotated[str, typer.Option(help="A trained model directory or a YAML reward-source tree")],
    data: Annotated[list[str], typer.Option(help="Preference pairs to evaluate on (repeatable)")],
    output: Annotated[Optional[Path], typer.Option(help="Write the metrics as JSON here")] = None,
    batch_size: BatchSize = 16,
    prompt_key: PromptKey = None,
    chosen_key: ChosenKey = None,
    rejected_key: RejectedKey = None,
    margin_key: MarginKey = None,
    subset_key: SubsetKey = None,
    split: Split = None,
    skip_invalid: SkipInvalid = None,
    ref_cache_dir: Annotated[Optional[str], typer.Option(help="Keep reference log-probabilities (haf, dpo) on disk here")] = None,
    ood_data: Annotated[Optional[list[str]], typer.Option(help="Out-of-distribution pairs: AUROC of reward std against --data (needs a posterior; repeatable)")] = None,
    allow_rule_module: AllowRuleModule = None,
):
    """Pairwise accuracy, mean margin, ECE, Brier and NLL per data set and per subset; with a Laplace
    posterior also the Laplace predictive's, and out-of-distribution detection by reward std."""
    from .evaluate import evaluate, format_table
    from .sources import load_source

    if output:
        check_output_file(output, "--output")
    columns = _columns(prompt_key=prompt_key, chosen_key=chosen_key, rejected_key=rejected_key, margin_key=margin_key,
                       subset_key=subset_key, split=split)
    results = evaluate(load_source(reward, allow_rule_module or ()), data, columns, bool(skip_invalid), batch_size, ref_cache_dir, ood_data or [])
    typer.echo(format_table(results))
    if output:
        write_json(output, results)
        typer.echo(f"metrics written to {output}")


@app.command()
def laplace(
    model_dir: Annotated[str, typer.Option(help="A trained model directory (the posterior is saved into it), or a Hugging Face "
                                                "sequence-classification reward model, folder or id (with --output)")],
    data: Annotated[str, typer.Option(help="The pairs the model was trained on (or a sample of them)")],
    subset: Annotated[str, typer.Option(help="all: LoRA weights and reward head; head: the reward head alone; lora: the LoRA weights alone")] = "all",
    prior: Annotated[str, typer.Option(help="evidence: prior precision by marginal likelihood; val: by Laplace NLL on --val-data")] = "evidence",
    val_data: Annotated[Optional[str], typer.Option(help="Held-out pairs for --prior val")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Pairs per forward/backward pass")] = 8,
    max_factor_size: Annotated[int, typer.Option(min=1, help="Kronecker factors with a larger side are kept as rank --factor-rank plus a diagonal")] = 1024,
    factor_rank: Annotated[int, typer.Option(min=1, help="Eigenpairs kept of a large factor")] = 128,
    output: Annotated[Optional[Path], typer.Option(help="Write the model with its posterior here instead of into --model-dir; "
                                                        "needed for a Hugging Face model, whose folder is never changed")] = None,
    prompt_key: PromptKey = None,
    chosen_key: ChosenKey = None,
    rejected_key: RejectedKey = None,
    split: Split = None,
    skip_invalid: SkipInvalid = None,
):
    """Fit a Laplace posterior (K-FAC over the LoRA weights and reward head) to a trained reward model;
    from then on its rewards come with a standard deviation."""
    from accelerate import PartialState

    from .bayes import fit_laplace
    from .model import CONFIG_FILE, RewardModel

    ours = (Path(model_dir) / CONFIG_FILE).is_file()
    if not ours and output is None:
        raise UserError(f"--model-dir {model_dir} is not a rewardstack model: give --output, a new folder for the model with its posterior")
    if output is not None:
        check_output_dir(output, "--output", "laplace")
    else:
        check_output_file(Path(model_dir) / "posterior.json", "--model-dir")
    columns = _columns(prompt_key=prompt_key, chosen_key=chosen_key, rejected_key=rejected_key, split=split)
    reward_model = RewardModel.from_pretrained(model_dir) if ours else RewardModel.from_sequence_classifier(model_dir)
    posterior = fit_laplace(reward_model, data, subset, batch_size, max_factor_size, factor_rank, columns,
                            bool(skip_invalid), prior, val_data)
    if not PartialState().is_main_process:
        return
    if output is not None:
        reward_model.save(output)
        mark_output_dir(output, "laplace")
    else:
        posterior.save(model_dir)
    info = posterior.info
    typer.echo(
        f"fitted on {info['pairs']} pairs ({info['truncated']} truncated, {sum(info.get('skipped', {}).values())} skipped) "
        f"in {info['fit_seconds']:.1f} s: {posterior.n_params:,} weights, posterior {posterior.memory_bytes() / 2**20:.1f} MiB"
    )
    typer.echo(f"prior precision {posterior.prior_precision:.4g} (by {prior}); log evidence by prior precision:")
    for delta, value in info["evidence_curve"][::4]:
        typer.echo(f"  {delta:10.4g}  {value:14.2f}")
    if "val_nll_curve" in info:
        typer.echo("validation NLL by prior precision: " + ", ".join(f"{d:.3g}: {v:.4f}" for d, v in info["val_nll_curve"][::4]))
    typer.echo(f"posterior saved in {output or model_dir}")


@app.command()
def score(
    reward: Annotated[str, typer.Option(help="A trained model directory or a YAML reward-source tree")],
    input: Annotated[str, typer.Option(help="Rows with a prompt (string or chat messages) and a response")],
    output: Annotated[Path, typer.Option(help="JSON lines: each input row plus its reward")],
    prompt_key: RowPromptKey = "prompt",
    response_key: RowResponseKey = "response",
    batch_size: BatchSize = 16,
    skip_invalid: SkipInvalid = None,
    allow_rule_module: AllowRuleModule = None,
):
    """Reward of every (prompt, response) row; all input fields are kept in the output."""
    from .data.load import load_score_rows
    from .sources import load_source

    check_output_file(output, "--output")
    rows, prompts, responses, report = load_score_rows(input, prompt_key, response_key, bool(skip_invalid))
    scores = load_source(reward, allow_rule_module or ()).score(prompts, responses, batch_size=batch_size)
    with atomic_path(output) as temporary, open(temporary, "w") as handle:
        for i, row in enumerate(rows):
            extra = {"reward": float(scores.mean[i])}
            if scores.std is not None:
                extra["reward_std"] = float(scores.std[i])
            if scores.parts:
                extra["reward_parts"] = {name: float(values[i]) for name, values in scores.parts.items()}
            handle.write(json.dumps({**row, **extra}) + "\n")
    skipped = sum(report.skipped.values())
    typer.echo(f"scored {len(rows)} rows ({scores.truncated} truncated, {skipped} skipped"
               f"{' ' + json.dumps(dict(report.skipped)) if skipped else ''}) -> {output}")


@app.command()
def bon(
    reward: Annotated[str, typer.Option(help="The reward that selects (proxy): a model directory or a YAML reward-source tree")],
    output_dir: Annotated[Path, typer.Option(help="Where results.jsonl, summary.json and best_of_n.png go")],
    pools: Annotated[Optional[str], typer.Option(help="Candidate pools: prompt + responses (+ gold or answer), or MATH / GSM8K-solutions / alpaca_eval files")] = None,
    prompts: Annotated[Optional[str], typer.Option(help="Instead of --pools: prompts (+ optional answer) to sample --n responses each from --policy")] = None,
    policy: Annotated[str, typer.Option(help="Policy to sample from: smollm2-135m, a local path or Hugging Face id")] = "smollm2-135m",
    n: Annotated[int, typer.Option(min=1, help="Samples per prompt")] = 8,
    temperature: Annotated[float, typer.Option(min=0.0, help="Sampling temperature; 0 = greedy")] = 0.7,
    top_p: Annotated[float, typer.Option(min=0.0, max=1.0, help="Nucleus sampling threshold, in (0, 1]")] = 1.0,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Tokens per sampled response at most")] = 256,
    seed: Annotated[int, typer.Option(help="Sampling seed (prompt i uses seed + i)")] = 0,
    prompt_key: Annotated[str, typer.Option(help="Column of the prompt in --prompts")] = "prompt",
    answer_key: Annotated[str, typer.Option(help="Column of the verifiable answer in --prompts (gold = answer matches)")] = "answer",
    gold_reward: Annotated[Optional[str], typer.Option(help="A reward (model directory or YAML tree) whose rewards are the gold")] = None,
    objective: Annotated[Optional[list[str]], typer.Option(help="mean, lcb:K (mean − K·std) or var:K (mean − K·variance); repeatable [default: mean]")] = None,
    max_pools: Annotated[Optional[int], typer.Option(help="Use only the first N pools or prompts")] = None,
    feedback: Annotated[Optional[str], typer.Option(help="With a bandit reward: `gold`, the gold of the chosen response is the bandit's feedback")] = None,
    batch_size: BatchSize = 16,
    skip_invalid: SkipInvalid = None,
    allow_rule_module: AllowRuleModule = None,
):
    """Best-of-n: per objective, the exact expected proxy and gold reward of best-of-n for every n up to
    the smallest pool, against n and KL; pools from a file or sampled from a policy. With a bandit
    reward and --feedback gold: the bandit learns which member to use per prompt (LASeR), against each
    member alone, a random member and the members' mean."""
    from .bon import Objective, format_best_of_n, run_bandit_best_of_n, run_best_of_n, set_gold_from, write_best_of_n
    from .data.pools import load_pools, load_prompts, write_pools
    from .sampling import SamplingConfig, sample_pools
    from .sources import load_source

    if (pools is None) == (prompts is None):
        raise UserError("bon: give exactly one of --pools (scored candidates) and --prompts (sample from --policy)")
    objectives = [Objective.parse(spec) for spec in (objective or ["mean"])]
    if len({o.name for o in objectives}) < len(objectives):
        raise UserError("bon: the same --objective is given twice")
    check_output_dir(output_dir, "--output-dir", "bon")
    allowed = allow_rule_module or ()
    unfinished = None
    if pools is not None:
        pool_list, report = load_pools(pools, bool(skip_invalid))
        pool_list = pool_list[:max_pools]
    else:
        prompt_rows, report = load_prompts(prompts, prompt_key, answer_key, bool(skip_invalid))
        config = SamplingConfig(n=n, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed)
        pool_list, unfinished = sample_pools(policy, prompt_rows[:max_pools], config)
        mark_output_dir(output_dir, "bon")
        write_pools(pool_list, output_dir / "pools.jsonl")
    if gold_reward is not None:
        set_gold_from(load_source(gold_reward, allowed), pool_list, batch_size)
    source = load_source(reward, allowed)
    if feedback is not None:
        from .sources.bandit import BanditSelector

        if feedback != "gold":
            raise UserError(f"bon: --feedback {feedback!r}: the feedback is `gold` (from the pools' gold, answers, or --gold-reward)")
        if not isinstance(source, BanditSelector):
            raise UserError(f"bon: --feedback needs a bandit reward (kind: bandit in a YAML tree); {reward} is not one")
        result = run_bandit_best_of_n(source, pool_list, batch_size)
    else:
        result = run_best_of_n(source, pool_list, objectives, batch_size)
    mark_output_dir(output_dir, "bon")
    if feedback is not None:
        source.save_state(source.state_path or output_dir / "bandit_state.safetensors")
        write_text(output_dir / "bandit_log.jsonl", "".join(json.dumps(entry) + "\n" for entry in source.log))
    summary = write_best_of_n(result, output_dir, f"best-of-n on {Path(pools or prompts).name}", skipped=dict(report.skipped),
                              source=str(pools or prompts), reward=reward, unfinished_samples=unfinished)
    sampled = "" if unfinished is None else f", {unfinished} samples cut at --max-new-tokens"
    typer.echo(f"{len(pool_list)} pools, n up to {len(result['n'])}, {result['truncated']} responses truncated to the reward "
               f"model's max_length{sampled}, {sum(report.skipped.values())} rows skipped")
    typer.echo(format_best_of_n(summary))
    if feedback is not None:
        typer.echo("arm counts by group: " + json.dumps(summary["arm_counts_by_group"]))
    typer.echo(f"results in {output_dir}")


@app.command()
def demo(
    output_dir: Annotated[Path, typer.Option(help="Where the demo writes its data, model and report")] = Path("runs/demo"),
    model: Annotated[str, typer.Option(help="Policy and reward-model backbone")] = "smollm2-135m",
    train_prompts: Annotated[int, typer.Option(help="Generated problems whose samples train the reward model")] = 24,
    bon_prompts: Annotated[int, typer.Option(help="Held-out problems for evaluation and best-of-n")] = 20,
    n: Annotated[int, typer.Option(help="Samples per problem")] = 12,
    objective: Annotated[str, typer.Option(help="Reward-model objective: bt or haf")] = "haf",
    laplace_subset: Annotated[str, typer.Option(help="Posterior over the reward head (head) or the LoRA weights too (all, slower)")] = "head",
    seed: Annotated[int, typer.Option(help="Random seed")] = 0,
):
    """The main job: sample answers to generated word problems, train a reward model on gold-labelled
    pairs, fit its Laplace posterior, and measure best-of-n (mean and lcb) against the gold."""
    from .demo import DemoConfig, run_demo

    run_demo(output_dir, DemoConfig(model=model, train_prompts=train_prompts, bon_prompts=bon_prompts, n=n, objective=objective,
                                     laplace_subset=laplace_subset, seed=seed))


@app.command()
def optimize(
    reward: Annotated[str, typer.Option(help="A YAML tree whose root is a bandit (kind: bandit): its members are the reward sources")],
    prompts: Annotated[str, typer.Option(help="Training prompts (prompt column; an answer column, when present, judges the pairs: gold_pairs)")],
    output_dir: Annotated[Path, typer.Option(help="Checkpoints per iteration, history.jsonl")],
    dev: Annotated[Optional[list[str]], typer.Option(help="Dev prompts with answers: greedy accuracy after each iteration; repeatable")] = None,
    policy: Annotated[str, typer.Option(help="Policy backbone (LoRA is trained on it)")] = "smollm2-135m",
    selection: Annotated[str, typer.Option(help="bandit, random, ensemble or single:NAME (a member)")] = "bandit",
    iterations: Annotated[int, typer.Option(help="Passes over the prompts")] = 2,
    batch_prompts: Annotated[int, typer.Option(help="Prompts per source choice and optimizer step")] = 8,
    n: Annotated[int, typer.Option(help="Samples per prompt")] = 4,
    pairs_per_prompt: Annotated[int, typer.Option(help="Pairs of the best response with the next-ranked ones")] = 1,
    temperature: Annotated[float, typer.Option(help="Sampling temperature")] = 0.8,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens per sampled response at most")] = 64,
    max_length: Annotated[int, typer.Option(help="Tokens of prompt + response in the update")] = 256,
    beta: Annotated[float, typer.Option(help="DPO β")] = 0.1,
    nll_weight: Annotated[float, typer.Option(help="Weight of the per-token NLL of the best response")] = 1.0,
    learning_rate: Annotated[float, typer.Option(help="AdamW learning rate")] = 5e-5,
    lora_r: Annotated[int, typer.Option(help="LoRA rank of the policy")] = 16,
    max_prompts: Annotated[Optional[int], typer.Option(help="Use only the first N prompts of each file")] = None,
    seed: Annotated[int, typer.Option(help="Random seed")] = 0,
    resume: Annotated[bool, typer.Option("--resume", help="Continue after the newest checkpoint in --output-dir")] = False,
    skip_invalid: SkipInvalid = None,
    allow_rule_module: AllowRuleModule = None,
):
    """Iterative DPO on a policy, with the reward source chosen per batch by a bandit (LASeR) or a baseline."""
    from .data.pools import load_prompts
    from .optimize import OptimizeConfig, Optimizer
    from .sources import load_source
    from .sources.bandit import BanditSelector

    config = OptimizeConfig(policy=policy, iterations=iterations, batch_prompts=batch_prompts, n=n, pairs_per_prompt=pairs_per_prompt,
                            temperature=temperature, max_new_tokens=max_new_tokens, max_length=max_length, beta=beta, nll_weight=nll_weight,
                            learning_rate=learning_rate, lora_r=lora_r, selection=selection, seed=seed)
    check_output_dir(output_dir, "--output-dir", "optimize", resume)
    selector = load_source(reward, allow_rule_module or ())
    if not isinstance(selector, BanditSelector):
        raise UserError(f"optimize: --reward must be a YAML tree whose root is `kind: bandit`; {reward} is not")
    train_rows = load_prompts(prompts, skip_invalid=bool(skip_invalid))[0][:max_prompts]
    dev_sets = {}
    for path in dev or []:
        rows = load_prompts(path, skip_invalid=bool(skip_invalid))[0][:max_prompts]
        if any(row.answer is None for row in rows):
            raise UserError(f"{path}: dev prompts need an `answer` on every row")
        dev_sets[Path(path).name] = rows
    history = Optimizer(selector, config, output_dir).run(train_rows, dev_sets, resume=resume)
    for record in history:
        accuracy = " ".join(f"{name}={value:.3f}" for name, value in record["accuracy"].items())
        typer.echo(f"iteration {record['iteration']}: {accuracy} pairs={record['pairs']} arms={record['arms']} {record['seconds']:.0f}s")
    typer.echo(f"results in {output_dir}")


@app.command()
def serve(
    reward: Annotated[str, typer.Option(help="A trained model directory or a YAML reward-source tree")],
    host: Annotated[str, typer.Option(help="Address to bind; anything but loopback needs an API key")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port")] = 8000,
    api_key_file: Annotated[Optional[Path], typer.Option(help="File whose first line is the API key [default: $REWARDSTACK_API_KEY]")] = None,
    batch_size: BatchSize = 16,
    max_batch_tokens: Annotated[int, typer.Option(help="Dynamic batching: tokens per scoring call at most")] = 16384,
    max_wait_ms: Annotated[float, typer.Option(help="Dynamic batching: how long a batch waits for more requests")] = 5.0,
    max_queue: Annotated[int, typer.Option(help="Requests waiting at most; more get 503 with Retry-After")] = 256,
    max_items: Annotated[int, typer.Option(help="Rows per request at most (413 above)")] = 1024,
    max_body_mb: Annotated[float, typer.Option(help="Request body size limit in MiB (413 above)")] = 8.0,
    graceful_shutdown_s: Annotated[float, typer.Option(min=0.0, help="On SIGTERM, how long in-flight requests may take to finish")] = 30.0,
    allow_rule_module: AllowRuleModule = None,
):
    """Serve a reward source over HTTP: POST /v1/score, POST /get_reward (OpenRLHF), POST /v1/feedback (bandits), GET /health, GET /v1/info."""
    from .server import ServerSettings, api_key, serve as run_server

    for name, value in (("max-batch-tokens", max_batch_tokens), ("max-queue", max_queue), ("max-items", max_items), ("max-body-mb", max_body_mb)):
        if not value > 0:
            raise UserError(f"--{name} must be positive, got {value}")
    settings = ServerSettings(max_batch_tokens=max_batch_tokens, max_wait_ms=max_wait_ms, max_queue=max_queue, batch_size=batch_size,
                              max_items=max_items, max_body_bytes=int(max_body_mb * 1024 * 1024), api_key=api_key(api_key_file))
    run_server(reward, host, port, settings, graceful_shutdown_s, allow_rule_module or ())


@app.command()
def export(
    model_dir: Annotated[Path, typer.Option(help="A trained model directory")],
    output: Annotated[Path, typer.Option(help="New folder: a standard Transformers sequence classifier (a causal LM for dpo models)")],
    keep_posterior: Annotated[bool, typer.Option("--keep-posterior", help="Also keep the model's head posterior, so rewardstack loads the folder with a std")] = False,
):
    """Export a trained model as a standard Transformers folder (LoRA merged, our head as the `score` layer,
    tokenizer and chat template, safetensors, a model card) for TRL, OpenRLHF, vLLM and reward-bench."""
    from .export import export_model

    model = export_model(model_dir, output, keep_posterior)
    kind = "causal LM" if model.config.objective == "dpo" else "AutoModelForSequenceClassification"
    typer.echo(f"exported {model_dir} as a {kind} to {output}")


compose = typer.Typer(no_args_is_help=True, help="Composite reward sources: calibrate a YAML tree, select ALaRM aspects.")
app.add_typer(compose, name="compose")


def _check_beside(config: Path, output: Path) -> None:
    check_output_file(output, "--output")
    if output.resolve().parent != config.resolve().parent:
        raise UserError(f"compose: write --output beside --config (in {config.parent}): the tree's paths are relative to it")


@compose.command()
def calibrate(
    config: Annotated[Path, typer.Option(help="A YAML reward-source tree with `normalize: calibrate` nodes")],
    data: Annotated[str, typer.Option(help="Calibration rows: a prompt and a response each")],
    output: Annotated[Path, typer.Option(help="Where the calibrated tree is written (may be --config itself)")],
    prompt_key: RowPromptKey = "prompt",
    response_key: RowResponseKey = "response",
    batch_size: BatchSize = 16,
    skip_invalid: SkipInvalid = None,
    allow_rule_module: AllowRuleModule = None,
):
    """Fit the z-score μ, σ of every `normalize: calibrate` node (and of nodes calibrated before) on the rows."""
    import yaml

    from .data.load import load_score_rows
    from .sources import calibrate_tree
    from .sources.tree import read_tree

    _check_beside(config, output)
    rows, prompts, responses, report = load_score_rows(data, prompt_key, response_key, bool(skip_invalid))
    tree = calibrate_tree(read_tree(config), config.parent, prompts, responses, batch_size, str(data), allow_rule_module or ())
    write_text(output, yaml.safe_dump(tree, sort_keys=False))
    typer.echo(f"calibrated on {len(rows)} rows ({sum(report.skipped.values())} skipped) -> {output}")


@compose.command("select-aspects")
def select_aspects_command(
    config: Annotated[Path, typer.Option(help="A hierarchical YAML tree: its holistic source and candidate aspects")],
    output: Annotated[Path, typer.Option(help="Where the tree with the selected aspects is written")],
    pools: Annotated[Optional[str], typer.Option(help="Candidate pools: two responses per prompt are drawn from each")] = None,
    prompts: Annotated[Optional[str], typer.Option(help="Instead of --pools: prompts to answer with --policy, once greedy and once sampled")] = None,
    policy: Annotated[str, typer.Option(help="Policy for --prompts")] = "smollm2-135m",
    temperature: Annotated[float, typer.Option(help="Temperature of the sampled response")] = 0.7,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens per response at most")] = 256,
    keep: Annotated[Optional[int], typer.Option(help="Keep at most this many aspects")] = None,
    max_inconsistency: Annotated[float, typer.Option(help="Keep aspects whose inconsistency rate is at most this")] = 0.5,
    max_pools: Annotated[Optional[int], typer.Option(help="Use only the first N pools or prompts")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the drawn pairs and of sampling")] = 0,
    batch_size: BatchSize = 16,
    skip_invalid: SkipInvalid = None,
    allow_rule_module: AllowRuleModule = None,
):
    """ALaRM aspect selection: how often each aspect prefers the other response than the holistic reward
    (inconsistency rate, ties excluded) and its win rate; write a tree keeping the most consistent aspects."""
    import random

    import yaml

    from .sources.select import select_aspects
    from .sources.tree import read_tree

    if (pools is None) == (prompts is None):
        raise UserError("select-aspects: give exactly one of --pools and --prompts")
    _check_beside(config, output)
    if pools is not None:
        from .data.pools import load_pools

        pool_list = [p for p in load_pools(pools, bool(skip_invalid))[0] if len(p.responses) >= 2][:max_pools]
        rng = random.Random(seed)
        drawn = [rng.sample(range(len(p.responses)), 2) for p in pool_list]
        prompt_list = [p.prompt for p in pool_list]
        first = [p.responses[i] for p, (i, _) in zip(pool_list, drawn)]
        second = [p.responses[j] for p, (_, j) in zip(pool_list, drawn)]
    else:
        from .backbones import load_backbone
        from .data.pools import load_prompts
        from .sampling import SamplingConfig, sample_responses

        prompt_list = [row.prompt for row in load_prompts(prompts, skip_invalid=bool(skip_invalid))[0][:max_pools]]
        model, tokenizer = load_backbone(policy)
        first = [r[0] for r in sample_responses(model, tokenizer, prompt_list, SamplingConfig(n=1, temperature=0, max_new_tokens=max_new_tokens)).responses]
        sampled = SamplingConfig(n=1, temperature=temperature, max_new_tokens=max_new_tokens, seed=seed)
        second = [r[0] for r in sample_responses(model, tokenizer, prompt_list, sampled).responses]
    rows, selected = select_aspects(read_tree(config), config.parent, prompt_list, first, second, keep, max_inconsistency, batch_size,
                                    allow_rule_module or ())
    write_text(output, yaml.safe_dump(selected, sort_keys=False))
    typer.echo(f"{len(prompt_list)} prompts, two responses each")
    typer.echo(f"{'aspect':<24}{'compared':>9}{'inconsistency':>15}{'win rate':>10}  kept")
    for row in rows:
        typer.echo(f"{row['name']:<24}{row['compared']:>9}{row['inconsistency']:>15.3f}{row['win_rate']:>10.3f}  {'yes' if row['kept'] else 'no'}")
    typer.echo(f"tree with {len(selected['aspects'])} aspects (mode {selected.get('mode', 'hierarchical')}) -> {output}")


def main() -> None:
    """Run the CLI. Every mistake a user can fix ends with one line `error: …` on stderr and exit code 2:
    wrong options (click's usage errors), bad input (UserError) and files that cannot be read or written."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        code = app(standalone_mode=False)
    except click_exceptions.UsageError as err:
        command = err.ctx.command_path if err.ctx else "rewardstack"
        _fail(f"{err.format_message()} (see `{command} --help`)")
    except UserError as err:
        _fail(str(err))
    except OSError as err:
        _fail(describe_os_error(err))
    except (click_exceptions.Abort, KeyboardInterrupt):
        _fail("interrupted", code=130)
    sys.exit(code if isinstance(code, int) else 0)


def _fail(message: str, code: int = 2) -> None:
    typer.echo(f"error: {' '.join(message.split())}", err=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
