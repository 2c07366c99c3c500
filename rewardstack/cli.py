"""`rewardstack` command line: parse options, call the library, print results.

User errors print one line on stderr and exit with code 2."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import os
import sys
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

try:  # typer ships its own copy of click from 0.2x on
    from typer._click import exceptions as click_exceptions
except ImportError:
    from click import exceptions as click_exceptions

from .bon import BonConfig
from .config import EvalConfig, LaplaceConfig, ScoreConfig, TrainConfig, load_config
from .demo import DemoConfig
from .distributed import end_processes
from .errors import UserError
from .files import check_output_dir, check_output_file, describe_os_error, mark_output_dir, write_json, write_text
from .laser.optimize import OptimizeConfig
from .options import help_of
from .server import ServeConfig
from .sources.select import SelectAspectsConfig

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, help="Reward models for LLM alignment.")

# Options of the commands whose other options come from a config dataclass.
BatchSize = Annotated[int, typer.Option(min=1, help="Sequences per forward pass")]
AllowRuleModule = Annotated[Optional[list[str]], typer.Option(
    "--allow-rule-module", help="A module (with its submodules) that `module:function` rules may import besides those beside the tree; repeatable")]
RowPromptKey = Annotated[str, typer.Option(help="Column of the prompt")]
RowResponseKey = Annotated[str, typer.Option(help="Column of the response")]
ConfigFile = Annotated[Optional[Path], typer.Option("--config", help="YAML file of this command's options (the flags below); flags override it")]


def config_command(group: typer.Typer, cls: type, name: str | None = None):
    """Register `body(config, **edge options)` as a command whose flags are `cls`'s fields (nested
    dataclasses flattened; help and shown default from the field), plus --config FILE.yaml. The body gets
    `cls` loaded from the file with the flags given on top: each default lives in the dataclass alone."""

    def decorate(body):
        edge = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in inspect.signature(body, eval_str=True).parameters.values() if p.name != "config"]
        fields = list(_config_fields(cls))
        generated = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=_flag(f, hint)) for _, f, hint in fields]
        config_file = inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=ConfigFile)

        @functools.wraps(body)
        def command(**options):
            overrides: dict = {}
            for route, f, _ in fields:
                target = overrides
                for part in route:
                    target = target.setdefault(part, {})
                target[f.name] = options.pop(f.name)
            return body(load_config(cls, options.pop("config"), overrides), **options)

        params = [*edge, config_file, *generated]
        command.__signature__ = inspect.Signature(params)
        command.__annotations__ = {p.name: p.annotation for p in params}
        del command.__wrapped__  # typer must read the generated signature, not the body's
        command.config_class = cls
        group.command(name)(command)
        return body

    return decorate


def _config_fields(cls: type, route: tuple[str, ...] = ()):
    """(route of nested field names, field, type) of every leaf field of `cls`."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _config_fields(hints[f.name], (*route, f.name))
        else:
            yield route, f, hints[f.name]


def _flag(f: dataclasses.Field, hint: Any) -> Any:
    """The typer annotation of a config field: optional (unset = keep the file's or the default), with
    the field's help, its dataclass default shown, --name/--no-name for booleans."""
    kinds = [a for a in (typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)) if a is not type(None)]
    kind = kinds[0]
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    flag = f"--{f.name.replace('_', '-')}"
    declarations = [f"{flag}/--no-{flag[2:]}"] if kind is bool else [flag]
    if typing.get_origin(kind) in (list, tuple):
        kind = list[typing.get_args(kind)[0]]
        default = list(default) if default is not None else None
    shown: Any = False if default is None else (", ".join(map(str, default)) if isinstance(default, list) else str(default))
    return Annotated[Optional[kind], typer.Option(*declarations, help=help_of(f), show_default=shown)]


@config_command(app, TrainConfig)
def train(
    config: TrainConfig,
    data: Annotated[str, typer.Option(help="Training pairs: .jsonl[.gz], .json, .parquet, .csv or a Hugging Face dataset")],
    output_dir: Annotated[Path, typer.Option(help="Run directory: config, metrics, checkpoints, model, summary")],
    eval_data: Annotated[Optional[list[str]], typer.Option(help="Held-out pairs, evaluated during and after training (repeatable)")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --output-dir from its newest checkpoint")] = False,
):
    """Train a reward model: Bradley–Terry, the HaF hybrid objective, or DPO."""
    from .evaluation import format_table
    from .training import train as run_training

    _, summary = run_training(config, data, eval_data or [], output_dir, resume=resume)
    if summary:
        train_info = summary["train"]
        typer.echo(
            f"trained {summary['steps']} steps on {train_info['pairs']} pairs "
            f"({train_info['truncated']} truncated, {sum(train_info['skipped'].values())} skipped) "
            f"at {summary['tokens_per_second']:.0f} tokens/s; model in {output_dir / 'model'}"
        )
        if summary["eval"]:
            typer.echo(format_table(summary["eval"]))


@config_command(app, EvalConfig, "eval")
def eval_command(
    config: EvalConfig,
    reward: Annotated[str, typer.Option(help="A trained model directory or a YAML reward-source tree")],
    data: Annotated[list[str], typer.Option(help="Preference pairs to evaluate on (repeatable)")],
    output: Annotated[Optional[Path], typer.Option(help="Write the metrics as JSON here")] = None,
    ood_data: Annotated[Optional[list[str]], typer.Option(help="Out-of-distribution pairs: AUROC of reward std against --data (needs a posterior; repeatable)")] = None,
    per_row: Annotated[Optional[Path], typer.Option(help="Write every row's rewards and outcomes here (JSON lines)")] = None,
    plot: Annotated[Optional[Path], typer.Option(help="Write reliability.png, subsets.png (and std_vs_error.png with stds) into this folder")] = None,
    allow_rule_module: AllowRuleModule = None,
):
    """Accuracy (strict and ties ½, with 95 % intervals), mean margin, ECE, Brier and NLL per data set and
    subset; rows with several responses or A/B labels; RewardBench v1 and 2 scores; with a Laplace
    posterior also the Laplace predictive's, and out-of-distribution detection by reward std."""
    from .distributed import is_main_process
    from .evaluation import evaluate, format_table, plot_evaluation
    from .sources import load_source

    for path, option in ((output, "--output"), (per_row, "--per-row")):
        if path:
            check_output_file(path, option)
    results = evaluate(load_source(reward, allow_rule_module or (), config.compute), data, config.columns, config.skip_invalid, config.batch_size,
                       config.ref_cache_dir, ood_data, config.format, config.ab_keys, per_row=bool(per_row or plot))
    if not is_main_process():  # under accelerate launch every process has the results; the main one reports them
        return
    typer.echo(format_table(results))
    if plot:
        for written in plot_evaluation(results, plot):
            typer.echo(f"plot written to {written}")
    records = [record for metrics in results.values() for record in metrics.pop("per_row", [])]
    if per_row:
        write_text(per_row, "".join(json.dumps(record) + "\n" for record in records))
        typer.echo(f"{len(records)} rows written to {per_row}")
    if output:
        write_json(output, results)
        typer.echo(f"metrics written to {output}")


@config_command(app, LaplaceConfig)
def laplace(
    config: LaplaceConfig,
    model_dir: Annotated[str, typer.Option(help="A trained model directory (the posterior is saved into it), or a Hugging Face "
                                                "sequence-classification reward model, folder or id (with --output)")],
    data: Annotated[str, typer.Option(help="The pairs the model was trained on (or a sample of them)")],
    val_data: Annotated[Optional[str], typer.Option(help="Held-out pairs for --prior val")] = None,
    output: Annotated[Optional[Path], typer.Option(help="Write the model with its posterior here instead of into --model-dir; "
                                                        "needed for a Hugging Face model, whose folder is never changed")] = None,
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
    reward_model = (RewardModel.from_pretrained(model_dir) if ours else RewardModel.from_sequence_classifier(model_dir)).use(config.compute)
    posterior = fit_laplace(reward_model, data, config, val_data)
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
    typer.echo(f"prior precision {posterior.prior_precision:.4g} (by {config.prior}); log evidence by prior precision:")
    for delta, value in info["evidence_curve"][::4]:
        typer.echo(f"  {delta:10.4g}  {value:14.2f}")
    if "val_nll_curve" in info:
        typer.echo("validation NLL by prior precision: " + ", ".join(f"{d:.3g}: {v:.4f}" for d, v in info["val_nll_curve"][::4]))
    typer.echo(f"posterior saved in {output or model_dir}")


@config_command(app, ScoreConfig)
def score(
    config: ScoreConfig,
    reward: Annotated[str, typer.Option(help="A trained model directory or a YAML reward-source tree")],
    input: Annotated[str, typer.Option(help="Rows with a prompt (string or chat messages) and a response")],
    output: Annotated[Path, typer.Option(help="JSON lines: each input row plus its reward")],
    allow_rule_module: AllowRuleModule = None,
    resume: Annotated[bool, typer.Option(help="Continue a killed run on the same input from its last finished chunk")] = False,
):
    """Reward of every (prompt, response) row; all input fields are kept in the output."""
    from .data.load import load_score_rows
    from .distributed import is_main_process
    from .scores import write_scored_rows
    from .sources import load_source

    check_output_file(output, "--output")
    rows, prompts, responses, report = load_score_rows(input, config.prompt_key, config.response_key, config.skip_invalid)
    run = {"reward": reward, "input": input, "rows": len(rows), "prompt_key": config.prompt_key, "response_key": config.response_key,
           "chunk_rows": config.chunk_rows}
    source = load_source(reward, allow_rule_module or (), config.compute)
    truncated = write_scored_rows(source, rows, prompts, responses, output, config.batch_size, config.chunk_rows, resume, run)
    skipped = sum(report.skipped.values())
    if is_main_process():
        typer.echo(f"scored {len(rows)} rows ({truncated} truncated, {skipped} skipped"
                   f"{' ' + json.dumps(dict(report.skipped)) if skipped else ''}) -> {output}")


@config_command(app, BonConfig)
def bon(
    config: BonConfig,
    reward: Annotated[str, typer.Option(help="The reward that selects (proxy): a model directory or a YAML reward-source tree")],
    output_dir: Annotated[Path, typer.Option(help="Where results.jsonl, summary.json and best_of_n.png go")],
    pools: Annotated[Optional[str], typer.Option(help="Candidate pools: prompt + responses (+ gold or answer), or MATH / GSM8K-solutions / alpaca_eval files")] = None,
    prompts: Annotated[Optional[str], typer.Option(help="Instead of --pools: prompts (+ optional answer) to sample --n responses each from --policy")] = None,
    gold_reward: Annotated[Optional[str], typer.Option(help="A reward (model directory or YAML tree) whose rewards are the gold")] = None,
    allow_rule_module: AllowRuleModule = None,
):
    """Best-of-n: per objective, the exact expected proxy and gold reward of best-of-n for every n up to
    the smallest pool, against n and KL; pools from a file or sampled from a policy. With a bandit
    reward and --feedback gold: the bandit learns which member to use per prompt (LASeR), against each
    member alone, a random member and the members' mean."""
    from .bon import best_of_n, format_best_of_n
    from .distributed import is_main_process
    from .sources import load_source

    if (pools is None) == (prompts is None):
        raise UserError("bon: give exactly one of --pools (scored candidates) and --prompts (sample from --policy)")
    check_output_dir(output_dir, "--output-dir", "bon")
    allowed = allow_rule_module or ()
    gold = load_source(gold_reward, allowed, config.compute) if gold_reward is not None else None
    summary = best_of_n(load_source(reward, allowed, config.compute), config, pools, prompts, gold, output_dir)
    if not is_main_process():  # under accelerate launch every process has the results; the main one reports them
        return
    sampled = "" if summary["unfinished_samples"] is None else f", {summary['unfinished_samples']} samples cut at --max-new-tokens"
    typer.echo(f"{summary['pools']} pools, n up to {len(summary['n'])}, {summary['truncated']} responses truncated to the reward "
               f"model's max_length{sampled}, {sum(summary['skipped'].values())} rows skipped")
    typer.echo(format_best_of_n(summary))
    if config.feedback is not None:
        typer.echo("arm counts by group: " + json.dumps(summary["arm_counts_by_group"]))
    typer.echo(f"results in {output_dir}")


@config_command(app, DemoConfig)
def demo(
    config: DemoConfig,
    output_dir: Annotated[Path, typer.Option(help="Where the demo writes its data, model and report")] = Path("runs/demo"),
):
    """The main job: sample answers to generated word problems, train a reward model on gold-labelled
    pairs, fit its Laplace posterior, and measure best-of-n (mean and lcb) against the gold."""
    from .demo import run_demo

    run_demo(output_dir, config)


@config_command(app, OptimizeConfig)
def optimize(
    config: OptimizeConfig,
    reward: Annotated[str, typer.Option(help="A YAML tree whose root is a bandit (kind: bandit): its members are the reward sources")],
    prompts: Annotated[str, typer.Option(help="Training prompts (prompt column; an answer column, when present, judges the pairs: gold_pairs)")],
    output_dir: Annotated[Path, typer.Option(help="Checkpoints per iteration, history.jsonl")],
    dev: Annotated[Optional[list[str]], typer.Option(help="Dev prompts with answers: greedy accuracy after each iteration; repeatable")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue after the newest checkpoint in --output-dir")] = False,
    allow_rule_module: AllowRuleModule = None,
):
    """Iterative DPO on a policy, with the reward source chosen per batch by a bandit (LASeR) or a baseline."""
    from .laser.optimize import optimize as run_optimize
    from .sources import load_source

    check_output_dir(output_dir, "--output-dir", "optimize", resume)
    history = run_optimize(load_source(reward, allow_rule_module or (), config.compute), config, prompts, output_dir, dev or [], resume)
    for record in history:
        accuracy = " ".join(f"{name}={value:.3f}" for name, value in record["accuracy"].items())
        typer.echo(f"iteration {record['iteration']}: {accuracy} pairs={record['pairs']} arms={record['arms']} {record['seconds']:.0f}s")
    typer.echo(f"results in {output_dir}")


@config_command(app, ServeConfig)
def serve(
    config: ServeConfig,
    reward: Annotated[str, typer.Option(help="A trained model directory or a YAML reward-source tree")],
    allow_rule_module: AllowRuleModule = None,
):
    """Serve a reward source over HTTP: POST /v1/score, POST /get_reward (OpenRLHF), POST /classify (verl), POST /v1/feedback (bandits), GET /health, GET /v1/info."""
    from .server import describe
    from .server import serve as run_server
    from .sources import load_source

    run_server(load_source(reward, allow_rule_module or (), config.compute), config, describe(reward))


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


def _check_beside(tree: Path, output: Path) -> None:
    check_output_file(output, "--output")
    if output.resolve().parent != tree.resolve().parent:
        raise UserError(f"compose: write --output beside --tree (in {tree.parent}): the tree's paths are relative to it")


TreeFile = Annotated[Path, typer.Option(help="A YAML reward-source tree")]


@config_command(compose, ScoreConfig)
def calibrate(
    config: ScoreConfig,
    tree: TreeFile,
    data: Annotated[str, typer.Option(help="Calibration rows: a prompt and a response each")],
    output: Annotated[Path, typer.Option(help="Where the calibrated tree is written (may be --tree itself)")],
    allow_rule_module: AllowRuleModule = None,
):
    """Fit the z-score μ, σ of every `normalize: calibrate` node (and of nodes calibrated before) on the rows."""
    import yaml

    from .data.load import load_score_rows
    from .sources import calibrate_tree
    from .sources.tree import read_tree

    _check_beside(tree, output)
    rows, prompts, responses, report = load_score_rows(data, config.prompt_key, config.response_key, config.skip_invalid)
    calibrated = calibrate_tree(read_tree(tree), tree.parent, prompts, responses, config.batch_size, str(data), allow_rule_module or ())
    write_text(output, yaml.safe_dump(calibrated, sort_keys=False))
    typer.echo(f"calibrated on {len(rows)} rows ({sum(report.skipped.values())} skipped) -> {output}")


@config_command(compose, SelectAspectsConfig, "select-aspects")
def select_aspects_command(
    config: SelectAspectsConfig,
    tree: TreeFile,
    output: Annotated[Path, typer.Option(help="Where the tree with the selected aspects is written")],
    pools: Annotated[Optional[str], typer.Option(help="Candidate pools: two responses per prompt are drawn from each")] = None,
    prompts: Annotated[Optional[str], typer.Option(help="Instead of --pools: prompts to answer with --policy, once greedy and once sampled")] = None,
    allow_rule_module: AllowRuleModule = None,
):
    """ALaRM aspect selection: how often each aspect prefers the other response than the holistic reward
    (inconsistency rate, ties excluded) and its win rate; write a tree keeping the most consistent aspects."""
    import yaml

    from .sources.select import aspect_pairs, select_aspects
    from .sources.tree import read_tree

    _check_beside(tree, output)
    prompt_list, first, second = aspect_pairs(config, pools, prompts)
    rows, selected = select_aspects(read_tree(tree), tree.parent, prompt_list, first, second, config.keep, config.max_inconsistency,
                                    config.batch_size, allow_rule_module or ())
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
        end_processes()
    except click_exceptions.UsageError as err:
        command = err.ctx.command_path if err.ctx else "rewardstack"
        _fail(f"{err.format_message()} (see `{command} --help`)")
    except UserError as err:
        _fail(str(err))
    except OSError as err:
        _fail(describe_os_error(err))
    except (typer.Abort, KeyboardInterrupt):
        _fail("interrupted", code=130)
    sys.exit(code if isinstance(code, int) else 0)


def _fail(message: str, code: int = 2) -> None:
    typer.echo(f"error: {' '.join(message.split())}", err=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
