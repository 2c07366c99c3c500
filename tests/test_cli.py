import dataclasses
import json

import numpy as np
import pytest
import torch
import yaml

from rewardstack.config import ComputeConfig, TrainConfig, load_config
from rewardstack.data.load import Columns
from rewardstack.errors import UserError
from rewardstack.model import ModelConfig, RewardModel
from rewardstack.synthetic import arithmetic_pairs

from conftest import cli, cli_in_two_processes, needs_accelerate, write_rows


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("m") / "model"
    model = RewardModel.create(ModelConfig(model="tiny-random", max_length=256, lora_r=4))
    torch.manual_seed(1)
    torch.nn.init.normal_(model.head.weight, std=1.0)  # rewards that differ per row
    model.save(directory)
    return directory


def test_bad_row_exits_2_with_one_line(tmp_path, model_dir):
    data = write_rows(tmp_path / "bad.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"}, {"prompt": "p", "chosen": "a"}])
    result = cli("eval", "--reward", model_dir, "--data", data, check_rc=2)
    assert result.stderr.strip() == f"error: {data}: row 2: field 'rejected': missing"


def test_a_crash_keeps_its_own_traceback_and_an_interrupt_exits_130(monkeypatch, capsys):
    import rewardstack.cli as cli_module

    def crash(**_):
        raise RuntimeError("a bug, not bad input")

    monkeypatch.setattr(cli_module, "app", crash)
    with pytest.raises(RuntimeError, match="a bug, not bad input"):
        cli_module.main()

    def interrupted(**_):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_module, "app", interrupted)
    with pytest.raises(SystemExit) as stop:
        cli_module.main()
    assert stop.value.code == 130 and capsys.readouterr().err == "error: interrupted\n"


def test_train_with_yaml_config_and_flag_override(tmp_path):
    data = write_rows(tmp_path / "t.jsonl", arithmetic_pairs(8, seed=0))
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"model": "tiny-random", "max_length": 256, "lora_r": 2, "batch_size": 4, "columns": {"subset_key": "none"}}))
    result = cli("train", "--data", data, "--output-dir", tmp_path / "run", "--config", config, "--batch-size", "8")
    assert "trained 1 steps on 8 pairs (0 truncated, 0 skipped)" in result.stdout
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert (saved["batch_size"], saved["lora_r"], saved["columns"]["subset_key"]) == (8, 2, "none")


def test_unknown_config_key_is_a_user_error(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("batch_sise: 3\n")
    with pytest.raises(UserError, match="unknown option 'batch_sise'"):
        load_config(TrainConfig, config)
    with pytest.raises(UserError, match="option 'epochs' must be int"):
        load_config(TrainConfig, None, {"epochs": "two"})
    with pytest.raises(UserError, match="lr_scheduler must be"):
        load_config(TrainConfig, None, {"lr_scheduler": "step"})


def test_eval_writes_json_with_subsets_and_counts(tmp_path, model_dir):
    rows = arithmetic_pairs(6, seed=2) + [{"prompt": "p", "chosen": "a", "rejected": "a"}]
    data = write_rows(tmp_path / "e.jsonl", rows)
    result = cli("eval", "--reward", model_dir, "--data", data, "--output", tmp_path / "m.json", "--skip-invalid")
    metrics = json.loads((tmp_path / "m.json").read_text())[str(data)]
    assert metrics["pairs"] == 6 and metrics["rows"] == 7
    assert metrics["skipped"] == {"chosen equals rejected": 1}
    model = RewardModel.from_pretrained(model_dir)
    pairs = arithmetic_pairs(6, seed=2)
    chosen = model.score([p["prompt"] for p in pairs], [p["chosen"] for p in pairs]).mean
    rejected = model.score([p["prompt"] for p in pairs], [p["rejected"] for p in pairs]).mean
    assert metrics["accuracy"] == pytest.approx(float(np.mean(chosen > rejected)))
    assert metrics["mean_margin"] == pytest.approx(float(np.mean(chosen - rejected)), abs=1e-6) and abs(metrics["mean_margin"]) > 1e-3
    assert sum(s["pairs"] for s in metrics["subsets"].values()) == 6
    assert "acc" in result.stdout.splitlines()[0]


def test_score_keeps_input_fields_and_matches_python(tmp_path, model_dir):
    rows = [{"id": i, "prompt": r["prompt"], "response": r["chosen"]} for i, r in enumerate(arithmetic_pairs(5, seed=4))]
    data = write_rows(tmp_path / "s.jsonl", rows)
    result = cli("score", "--reward", model_dir, "--input", data, "--output", tmp_path / "out.jsonl")
    assert "scored 5 rows (0 truncated, 0 skipped)" in result.stdout
    out = [json.loads(l) for l in (tmp_path / "out.jsonl").read_text().splitlines()]
    expected = RewardModel.from_pretrained(model_dir).score([r["prompt"] for r in rows], [r["response"] for r in rows]).mean
    assert [o["id"] for o in out] == list(range(5))
    assert [o["reward"] for o in out] == pytest.approx(list(expected), abs=1e-6)


def test_every_config_field_has_a_documented_train_flag():
    text = cli("train", "--help").stdout
    names = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in ("columns", "compute")]
    names += [f.name for f in dataclasses.fields(Columns)] + [f.name for f in dataclasses.fields(ComputeConfig)]
    for name in names:
        assert "--" + name.replace("_", "-") in text, name


def test_a_killed_score_run_resumes_without_scoring_a_row_twice(tmp_path):
    """A rule that fails at row 7 (the run dies after two chunks of 3), then the rerun with --resume: the
    output equals an uninterrupted run's, and rows 0–5 were scored once only."""
    (tmp_path / "trap.py").write_text(
        "from pathlib import Path\n"
        "HERE = Path(__file__).parent\n"
        "def score(prompt, response):\n"
        "    with open(HERE / 'calls.log', 'a') as log:\n"
        "        log.write(response + '\\n')\n"
        "    if response == 'answer 7' and (HERE / 'armed').exists():\n"
        "        raise RuntimeError('killed')\n"
        "    return float(len(prompt) + 10 * int(response.split()[1]))\n")
    (tmp_path / "tree.yaml").write_text("kind: rule\nfunction: trap:score\n")
    rows = write_rows(tmp_path / "rows.jsonl", [{"prompt": f"p{i % 4}", "response": f"answer {i}", "id": i} for i in range(11)])
    out = tmp_path / "scored.jsonl"
    (tmp_path / "armed").write_text("")
    common = ["score", "--reward", tmp_path / "tree.yaml", "--input", rows, "--output", out, "--chunk-rows", "3"]
    failed = cli(*common, check_rc=2)
    assert "row 2 raised RuntimeError: killed (in the chunk of input rows 7–9; rows 1–6 are kept: fix it and pass --resume)" in failed.stderr
    assert not out.exists()
    assert "interrupted run left" in cli(*common, check_rc=2).stderr  # without --resume it will not start over silently
    assert "other chunk_rows" in cli(*common[:-1], "4", "--resume", check_rc=2).stderr
    (tmp_path / "armed").unlink()
    cli(*common, "--resume")
    calls = [int(n) for n in (tmp_path / "calls.log").read_text().split()[1::2]]
    assert calls == list(range(8)) + list(range(6, 11))  # rows 0–7 (7 raised), then the unfinished chunk 6–8 onwards
    scored = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in scored] == list(range(11))
    assert [r["reward"] for r in scored] == [2.0 + 10 * i for i in range(11)]
    assert not list(tmp_path.glob(".scored.jsonl.*"))
    assert "no interrupted run to resume" in cli(*common, "--resume", check_rc=2).stderr


def test_merge_shards_puts_every_field_back_in_row_order():
    from rewardstack.distributed import merge_shards
    from rewardstack.scores import RewardScores

    first = RewardScores(mean=np.array([0.0, 2.0, 4.0]), std=np.array([0.5, 0.7, 0.9]), parts={"a": np.array([1.0, 3.0, 5.0])}, arm=np.array([1, 0, 1]), truncated=1)
    second = RewardScores(mean=np.array([1.0, 3.0]), std=np.array([0.6, 0.8]), parts={"a": np.array([2.0, 4.0])}, arm=np.array([0, 0]), truncated=2)
    merged = merge_shards([([1, 3], second), ([], None), ([0, 2, 4], first)], 5)
    assert merged.mean.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0] and merged.std.tolist() == [0.5, 0.6, 0.7, 0.8, 0.9]
    assert merged.parts["a"].tolist() == [1.0, 2.0, 3.0, 4.0, 5.0] and merged.arm.tolist() == [1, 0, 0, 0, 1] and merged.truncated == 3
    no_std = merge_shards([([0], RewardScores(mean=np.array([1.0]))), ([1], second.rows(slice(0, 1)))], 2)
    assert no_std.std is None and no_std.arm is None and no_std.mean.tolist() == [1.0, 1.0]


def counted_tree(tmp_path, rule: str) -> None:
    """tmp_path/tree.yaml: the mean of a seeded model `m` (rewards differ per row) and a rule returning
    `rule`, which logs each call as `pid response` to calls.log, so a test sees which process scored what."""
    from test_packing import make_model

    make_model(objective="bt").save(tmp_path / "m")
    (tmp_path / "counted.py").write_text(
        "import os\nfrom pathlib import Path\n"
        "def score(prompt, response):\n"
        "    with open(Path(__file__).parent / 'calls.log', 'a') as log:\n"
        "        log.write(f'{os.getpid()} {response}\\n')\n"
        f"    return float({rule})\n")
    (tmp_path / "tree.yaml").write_text(yaml.safe_dump({"kind": "ensemble", "combine": "mean", "members": [
        {"name": "rm", "source": {"kind": "model", "path": "m"}}, {"name": "chars", "source": {"kind": "rule", "function": "counted:score"}}]}))


@needs_accelerate
def test_score_under_accelerate_launch_matches_one_process(tmp_path):
    """Two processes deal the rows of each chunk between them (the last chunk of one row leaves one idle):
    every row is scored once, by one of two processes, and the output file is one process's, in input
    order, parts included."""
    counted_tree(tmp_path, "len(response)")
    rows = write_rows(tmp_path / "rows.jsonl", [{"prompt": "Prompt " + "word " * i, "response": f"answer{i} " * (i % 3 + 1), "id": i} for i in range(9)])
    common = ["score", "--reward", str(tmp_path / "tree.yaml"), "--input", str(rows), "--chunk-rows", "4"]
    cli(*common, "--output", tmp_path / "one.jsonl")
    (tmp_path / "calls.log").unlink()
    launched = cli_in_two_processes(*common, "--output", tmp_path / "two.jsonl")
    assert launched.stdout.count("scored 9 rows") == 1  # the main process reports, once
    calls = [line.split(" ", 1) for line in (tmp_path / "calls.log").read_text().splitlines()]
    assert sorted(int(response.split()[0][6:]) for _, response in calls) == list(range(9))  # each row once
    assert len({pid for pid, _ in calls}) == 2
    one, two = ([json.loads(line) for line in (tmp_path / name).read_text().splitlines()] for name in ("one.jsonl", "two.jsonl"))
    assert [r["id"] for r in two] == list(range(9))
    assert [r["reward_parts"]["chars"] for r in two] == [r["reward_parts"]["chars"] for r in one]
    np.testing.assert_allclose([r["reward"] for r in two], [r["reward"] for r in one], atol=1e-5)
    np.testing.assert_allclose([r["reward_parts"]["rm"] for r in two], [r["reward_parts"]["rm"] for r in one], atol=1e-5)
    assert len({round(r["reward_parts"]["rm"], 4) for r in one}) == 9
    assert not list(tmp_path.glob(".two.jsonl.*"))


@needs_accelerate
def test_eval_under_accelerate_launch_matches_one_process(tmp_path):
    """Two processes share the pairs (7: one process gets one more); the metrics and the per-row rewards,
    the haf model's implicit reward included, equal one process's, and only the main process writes."""
    from test_packing import make_model

    make_model(objective="haf").save(tmp_path / "m")
    pairs = write_rows(tmp_path / "pairs.jsonl", [{"prompt": "Question " + "word " * i, "chosen": f"yes {i}" * (i % 3 + 1), "rejected": f"no {i}"}
                                                 for i in range(7)])
    listed = write_rows(tmp_path / "listed.jsonl", [{"prompt": f"Pick {i}", "chosen": [f"good {i}", f"fine {i} " * (i + 1)],
                                                     "rejected": [f"bad {i}", "worse", f"worst {i}" * 2]} for i in range(3)])
    common = ["eval", "--reward", str(tmp_path / "m"), "--data", str(pairs), "--data", str(listed)]
    cli(*common, "--output", tmp_path / "one.json", "--per-row", tmp_path / "one.jsonl")
    launched = cli_in_two_processes(*common, "--output", tmp_path / "two.json", "--per-row", tmp_path / "two.jsonl")
    assert launched.stdout.count("metrics written to") == 1
    listed_one, listed_two = (json.loads((tmp_path / name).read_text())[str(listed)] for name in ("one.json", "two.json"))
    assert listed_two == listed_one and listed_one["comparisons"] == 18  # several responses per row: 3 × 2 × 3
    one, two = (json.loads((tmp_path / name).read_text())[str(pairs)] for name in ("one.json", "two.json"))
    assert two["pairs"] == one["pairs"] == 7 and two["accuracy"] == one["accuracy"]
    for key in ("nll", "mean_margin"):
        assert two[key] == pytest.approx(one[key], abs=1e-5)
    assert two["implicit_reward"]["accuracy"] == one["implicit_reward"]["accuracy"]
    rows_one, rows_two = ([json.loads(line) for line in (tmp_path / name).read_text().splitlines()] for name in ("one.jsonl", "two.jsonl"))
    np.testing.assert_allclose([r["rejected_rewards"] for r in rows_two[7:]], [r["rejected_rewards"] for r in rows_one[7:]], atol=1e-5)
    assert len({round(x, 4) for r in rows_one[7:] for x in r["rejected_rewards"]}) == 9
    rows_one, rows_two = rows_one[:7], rows_two[:7]
    assert [r["row"] for r in rows_two] == list(range(7)) and [r["all"] for r in rows_two] == [r["all"] for r in rows_one]
    for side in ("chosen_rewards", "rejected_rewards"):
        np.testing.assert_allclose([r[side] for r in rows_two], [r[side] for r in rows_one], atol=1e-5)
    assert len({round(r["chosen_rewards"][0], 4) for r in rows_one}) == 7


@needs_accelerate
def test_bon_under_accelerate_launch_matches_one_process(tmp_path):
    """Two processes share the 15 responses of 5 pools: each response is scored once, and the per-pool
    records and the curves equal one process's; only the main process writes and reports."""
    counted_tree(tmp_path, "len(response) % 5")
    pools = write_rows(tmp_path / "pools.jsonl", [{"prompt": f"Question {i} " + "word " * i, "responses": [f"answer {i}.{j} " * (j + 1) for j in range(3)],
                                                   "gold": [float((i + j) % 2) for j in range(3)]} for i in range(5)])
    common = ["bon", "--reward", str(tmp_path / "tree.yaml"), "--pools", str(pools), "--batch-size", "2"]
    cli(*common, "--output-dir", tmp_path / "one")
    (tmp_path / "calls.log").unlink()
    launched = cli_in_two_processes(*common, "--output-dir", tmp_path / "two")
    assert launched.stdout.count("5 pools, n up to 3") == 1
    calls = [line.split(" ", 1) for line in (tmp_path / "calls.log").read_text().splitlines()]
    assert sorted(response for _, response in calls) == sorted(f"answer {i}.{j} " * (j + 1) for i in range(5) for j in range(3))
    assert len({pid for pid, _ in calls}) == 2
    one, two = ([json.loads(line) for line in (tmp_path / run / "results.jsonl").read_text().splitlines()] for run in ("one", "two"))
    assert [r["key"] for r in two] == [r["key"] for r in one] and [r["objectives"]["mean"]["best"] for r in two] == [r["objectives"]["mean"]["best"] for r in one]
    np.testing.assert_allclose([r["reward"] for r in two], [r["reward"] for r in one], atol=1e-5)
    assert len({round(x, 4) for r in one for x in r["reward_parts"]["rm"]}) == 15  # the model's rewards differ per response
    curves = [json.loads((tmp_path / run / "summary.json").read_text())["curves"]["mean"] for run in ("one", "two")]
    np.testing.assert_allclose(curves[1]["gold"], curves[0]["gold"], atol=1e-9)
    np.testing.assert_allclose(curves[1]["proxy"], curves[0]["proxy"], atol=1e-5)
