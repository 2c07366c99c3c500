"""The Python API takes data as objects: paths, datasets, DataFrames and lists of rows give the same
results; mixtures draw exact shares; configs take TRL's names, have one default per field, and log to
trackers."""

import dataclasses
import math
import typing

import datasets
import numpy as np
import pandas as pd
import pytest
import torch
import typer
import yaml

from rewardstack import Laplace, Mixture, evaluate, load_preferences, train
from rewardstack.bon import BonConfig, best_of_n
from rewardstack.cli import _config_fields, app, config_command
from rewardstack.config import TrainConfig
from rewardstack.data.load import named_data
from rewardstack.errors import UserError
from rewardstack.synthetic import arithmetic_pairs, write_jsonl

from conftest import cli


def tiny_config(**overrides) -> TrainConfig:
    values = dict(model="tiny-random", max_length=128, lora_r=4, batch_size=8, learning_rate=5e-3, warmup_ratio=0.0, seed=3)
    return TrainConfig(**{**values, **overrides})


@pytest.fixture(scope="module")
def rows():
    return arithmetic_pairs(24, seed=0), arithmetic_pairs(12, seed=1)


def forms(rows_list, path):
    """The same rows as a path, a list of dicts, a datasets.Dataset and a pandas DataFrame."""
    write_jsonl(rows_list, path)
    return {"path": str(path), "list": list(rows_list), "dataset": datasets.Dataset.from_list(rows_list),
            "dataframe": pd.DataFrame(rows_list)}


def test_every_form_of_data_gives_the_same_pairs(rows, tmp_path):
    loaded = {name: load_preferences(data)[0] for name, data in forms(rows[0], tmp_path / "t.jsonl").items()}
    assert all(pairs == loaded["path"] for pairs in loaded.values()) and len(loaded["path"]) == 24
    streamed = datasets.Dataset.from_list(rows[0]).to_iterable_dataset()
    assert load_preferences(streamed)[0] == loaded["path"]


def test_train_evaluate_and_laplace_from_any_form_give_identical_results(rows, tmp_path):
    train_forms, test_forms = forms(rows[0], tmp_path / "train.jsonl"), forms(rows[1], tmp_path / "test.jsonl")
    results = {}
    for name in ("path", "list", "dataset"):
        model, summary = train(tiny_config(), train_forms[name], {"test": test_forms[name]})
        metrics = evaluate(model, {"test": test_forms[name]})["test"]
        posterior = Laplace(model, subset="head").fit(train_forms[name]).posterior
        std = model.score([rows[1][0]["prompt"]], [rows[1][0]["chosen"]]).std
        results[name] = (model.head.weight.detach().clone(), summary["eval"]["test"]["accuracy"], metrics, posterior.prior_precision, std)
    head, accuracy, metrics, precision, std = results["path"]
    assert metrics["accuracy"] == accuracy and not np.allclose(head.numpy(), 0)  # a trained head, evaluated on 12 pairs
    for name in ("list", "dataset"):
        torch.testing.assert_close(results[name][0], head, rtol=0, atol=0)
        assert results[name][1:4] == (accuracy, metrics, precision)
        np.testing.assert_array_equal(results[name][4], std)


def test_train_without_an_output_dir_returns_the_model_and_keeps_nothing(rows, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model, summary = train(tiny_config(), rows[0])
    assert summary["train"]["source"] == "<list>" and summary["train"]["pairs"] == 24 and summary["steps"] == 3
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(UserError, match="need an output directory"):
        train(tiny_config(save_every=1), rows[0])


def test_best_of_n_takes_pools_as_rows_a_dataset_or_a_path(tmp_path):
    from rewardstack.sources.rules import Rule

    pools = [{"prompt": "p1", "responses": ["a", "bbb", "cc"], "gold": [0.0, 1.0, 0.5]},
             {"prompt": "p2", "responses": ["dddd", "e", "ff"], "gold": [1.0, 0.0, 0.0]}]
    length = Rule(lambda prompt, response: float(len(response)), "length")
    summary = best_of_n(length, BonConfig(), pools=pools)
    # Selection by length. n = 1: the mean gold; n = 2: the longer of each of the 3 pairs; n = 3: the longest.
    assert summary["curves"]["mean"]["gold"] == pytest.approx([(0.5 + 1 / 3) / 2, (2.5 / 3 + 2 / 3) / 2, 1.0])
    assert summary["pools"] == 2 and summary["source"] == "<list>"
    assert best_of_n(length, BonConfig(), pools=datasets.Dataset.from_list(pools))["curves"] == summary["curves"]
    path = write_jsonl(pools, tmp_path / "pools.jsonl")
    assert best_of_n(length, BonConfig(), pools=str(path))["curves"] == summary["curves"]
    bad = {"prompt": "p3", "responses": ["a", "b"], "gold": [1.0]}
    assert best_of_n(length, BonConfig(skip_invalid=True), pools=pools + [bad])["skipped"] == {"wrong type": 1}
    with pytest.raises(UserError, match="row 3: field 'gold'"):
        best_of_n(length, BonConfig(), pools=pools + [bad])


def test_a_mixture_draws_exact_seeded_shares_reading_only_what_it_takes(rows):
    first = [dict(r, subset="first") for r in rows[0]]
    read = []

    def second():  # a stream that must not be read past the pairs the mixture takes
        for i, row in enumerate(rows[1]):
            read.append(i)
            yield dict(row, subset="second")

    mixture = Mixture([first, second()], probabilities=[3, 1], size=10, seed=7)
    assert mixture.counts() == [8, 2]  # 7.5 and 2.5: the tie of remainders goes to the first source
    pairs, report = load_preferences(mixture)
    assert [p.subset for p in pairs].count("first") == 8 and len(pairs) == 10 and report.pairs == 10
    assert read == [0, 1] and report.rows == 8 + 2
    order = [p.subset for p in pairs]
    second_rows = [dict(row, subset="second") for row in rows[1]]
    assert order == [p.subset for p in load_preferences(Mixture([first, second_rows], [3, 1], 10, seed=7))[0]]
    assert order != [p.subset for p in load_preferences(Mixture([first, second_rows], [3, 1], 10, seed=8))[0]]
    assert Mixture([first, second_rows], [0.2, 0.5], 7).counts() == [2, 5]  # 2 + 5: exact shares 2.0 and 5.0
    with pytest.raises(UserError, match="only 12"):
        load_preferences(Mixture([first, second_rows], [0.5, 0.5], 40))
    with pytest.raises(UserError, match="one probability per source"):
        Mixture([first], [0.5, 0.5], 4)


def test_rows_in_memory_are_named_in_errors_and_dataframe_gaps_are_absent_fields(rows):
    bad = [rows[0][0], {"prompt": "x", "chosen": "y"}]
    with pytest.raises(UserError, match=r"^<list>: row 2: field 'rejected': missing$"):
        load_preferences(bad)
    frame = pd.DataFrame([{**rows[0][0], "margin": 2.0}, rows[0][1]])  # the second row's margin is NaN in the frame
    assert [p.margin for p in load_preferences(frame)[0]] == [2.0, None]
    with pytest.raises(UserError, match=r"<DatasetDict>: choose a split, e.g. data\['train'\]"):
        load_preferences(datasets.DatasetDict({"train": datasets.Dataset.from_list(rows[0])}))
    with pytest.raises(UserError, match="<int>: unsupported data"):
        load_preferences(3)
    assert list(named_data(["a.jsonl", "b.jsonl"])) == ["a.jsonl", "b.jsonl"] and list(named_data(rows[0])) == ["<list>"]


def test_a_trl_style_yaml_trains(rows, tmp_path):
    data = write_jsonl(rows[0], tmp_path / "t.jsonl")
    trl = {"model_name_or_path": "tiny-random", "learning_rate": 3e-3, "per_device_train_batch_size": 4, "gradient_accumulation_steps": 2,
           "num_train_epochs": 2, "max_length": 128, "lr_scheduler_type": "cosine", "lora_r": 4, "logging_steps": 5, "seed": 5}
    (tmp_path / "trl.yaml").write_text(yaml.safe_dump(trl))
    result = cli("train", "--data", data, "--output-dir", tmp_path / "run", "--config", tmp_path / "trl.yaml")
    assert "ignored TRL options that do not apply here: logging_steps" in result.stderr
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert (saved["micro_batch_size"], saved["batch_size"], saved["epochs"], saved["learning_rate"]) == (4, 8, 2, 3e-3)
    assert (saved["model"], saved["lr_scheduler"], saved["seed"]) == ("tiny-random", "cosine", 5)
    assert "trained 6 steps on 24 pairs" in result.stdout  # 2 epochs of ⌈24 / 8⌉ steps
    both = tmp_path / "both.yaml"
    both.write_text(yaml.safe_dump({"num_train_epochs": 2, "epochs": 3}))
    error = cli("train", "--data", data, "--output-dir", tmp_path / "r2", "--config", both, check_rc=2)
    assert "num_train_epochs (TRL's name for epochs) and epochs are both given" in error.stderr


def test_report_to_tensorboard_writes_event_files(rows, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(tiny_config(report_to="tensorboard"), rows[0], {"test": rows[1]}, output_dir=tmp_path / "run")
    (events,) = (tmp_path / "run" / "logs" / "rewardstack").glob("events.out.tfevents.*")  # the scalars (hparams go in a subfolder)
    logged = EventAccumulator(str(events)).Reload()
    assert [e.step for e in logged.Scalars("loss")] == [1, 2, 3] and logged.Scalars("eval/test/accuracy")[0].step == 3
    losses = [r["loss"] for r in map(yaml.safe_load, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert [e.value for e in logged.Scalars("loss")] == pytest.approx(losses, rel=1e-6)
    with pytest.raises(UserError, match="report_to"):
        tiny_config(report_to="tensorbored")


def _commands(group: typer.Typer, prefix=()):
    for info in group.registered_commands:
        yield (*prefix, info.name or info.callback.__name__), info.callback
    for sub in group.registered_groups:
        yield from _commands(sub.typer_instance, (*prefix, sub.name))


def test_every_config_field_has_its_one_default_in_the_dataclass():
    command = typer.main.get_command(app)
    checked = 0
    for path, callback in _commands(app):
        target = command
        for name in path:
            target = target.commands[name]
        params = {p.name: p for p in target.params}
        config_cls = getattr(callback, "config_class", None)
        if config_cls is None:
            continue
        for _, field, _ in _config_fields(config_cls):
            default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
            param = params[field.name]
            assert param.default is None, f"{path}: --{field.name} has a default of its own"
            shown = False if default is None else (", ".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default))
            assert param.show_default == shown, f"{path}: --{field.name}"
            checked += 1
    assert checked > 80


def test_flags_override_the_config_file_which_overrides_the_defaults(tmp_path):
    from typer.testing import CliRunner

    seen = {}
    probe = typer.Typer()
    probe.callback()(lambda: None)  # a group, so the command is called by name

    @config_command(probe, BonConfig, "probe")
    def record(config: BonConfig, label: typing.Annotated[str, typer.Option()] = "x"):
        seen.update(config=config, label=label)

    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"policy": "tiny-random", "max_pools": 3, "sampling": {"n": 5, "temperature": 0.5}}))
    result = CliRunner().invoke(probe, ["probe", "--config", str(tmp_path / "c.yaml"), "--temperature", "0.25", "--objective", "lcb:1",
                                        "--objective", "mean", "--label", "y", "--skip-invalid"])
    assert result.exit_code == 0, result.output
    config = seen["config"]
    assert (config.sampling.n, config.sampling.temperature, config.policy, config.max_pools) == (5, 0.25, "tiny-random", 3)
    assert (config.objective, config.skip_invalid, seen["label"]) == (["lcb:1", "mean"], True, "y")
    assert (config.sampling.top_p, config.batch_size) == (1.0, 16)  # untouched: the dataclass defaults


def test_gradient_checkpointing_changes_memory_not_results(rows, tmp_path):
    plain, _ = train(tiny_config(), rows[0], output_dir=tmp_path / "plain")
    checkpointed, _ = train(tiny_config(gradient_checkpointing=True), rows[0], output_dir=tmp_path / "checkpointed")
    losses = [[r["loss"] for r in map(yaml.safe_load, (tmp_path / run / "metrics.jsonl").read_text().splitlines())] for run in ("plain", "checkpointed")]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5) and len(losses[0]) == 3
    torch.testing.assert_close(checkpointed.head.weight, plain.head.weight, rtol=1e-4, atol=1e-6)
    assert checkpointed.decoder.gradient_checkpointing and not plain.decoder.gradient_checkpointing


def test_bf16_autocast_trains_from_the_cli(rows, tmp_path):
    data = write_jsonl(rows[0], tmp_path / "t.jsonl")
    result = cli("train", "--data", data, "--output-dir", tmp_path / "run", "--model", "tiny-random", "--max-length", "128", "--lora-r", "4", "--bf16")
    assert "trained 3 steps on 24 pairs" in result.stdout
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["compute"]["bf16"] is True
    losses = [r["loss"] for r in map(yaml.safe_load, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())]
    assert all(math.isfinite(loss) for loss in losses) and losses[0] == pytest.approx(math.log(2), abs=0.02)  # a zero head: σ(0) = ½
