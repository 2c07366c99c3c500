"""Bad input and faults through the CLI: every case exits with code 2 and one line on stderr that names the
file, row and field (or the option, or the node of a reward tree), without a traceback, and leaves every
file that was there before unchanged, with nothing half-written beside them."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
import yaml

from rewardstack.model import ModelConfig, RewardModel
from rewardstack.synthetic import arithmetic_pairs

from conftest import write_rows

MODEL_OPTIONS = ["--model", "tiny-random", "--max-length", "64", "--lora-r", "2", "--batch-size", "4"]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A folder every case starts from: a model, pairs, score rows, pools, prompts, a bandit tree and an
    interrupted training run with checkpoints."""
    root = tmp_path_factory.mktemp("base")
    RewardModel.create(ModelConfig(model="tiny-random", max_length=64, lora_r=2)).save(root / "m")
    pairs = arithmetic_pairs(8, seed=0)
    write_rows(root / "t.jsonl", pairs)
    write_rows(root / "s.jsonl", [{"prompt": p["prompt"], "response": p["chosen"]} for p in pairs])
    write_rows(root / "p.jsonl", [{"prompt": p["prompt"], "responses": [p["chosen"], p["rejected"]], "gold": [1, 0]} for p in pairs])
    write_rows(root / "q.jsonl", [{"prompt": "What is 1 + 1?", "answer": "2"}, {"prompt": "What is 2 + 2?", "answer": "4"}])
    (root / "raises.py").write_text("def reward(prompt, response):\n    raise ZeroDivisionError('no reward for you')\n")
    (root / "tree.yaml").write_text(yaml.safe_dump({"kind": "rule", "function": "raises:reward"}))
    (root / "bandit.yaml").write_text(yaml.safe_dump({"kind": "bandit", "context": {"kind": "words", "dim": 8}, "members": [
        {"name": "length", "source": {"kind": "rule", "builtin": "length"}}, {"name": "m", "source": {"kind": "model", "path": "m"}}]}))
    from rewardstack.cli import main

    cwd = os.getcwd()
    os.chdir(root)  # the run records its data as given: t.jsonl, as the cases give it
    try:
        _invoke(main, ["train", "--data", "t.jsonl", "--output-dir", "run", *MODEL_OPTIONS, "--epochs", "2", "--save-every", "1"])
    finally:
        os.chdir(cwd)
    shutil.rmtree(root / "run" / "model")  # as if stopped before the end: resumable from its checkpoints
    (root / "run" / "summary.json").unlink()
    return root


@dataclass
class Case:
    name: str
    setup: Callable[[Path], list]  # writes what the case needs into the folder, returns the CLI arguments
    expect: tuple[str, ...]  # what the error line must name


def _corrupt(path: Path, keep: int | None = None) -> None:
    """Cut a file to `keep` bytes (default: half of it)."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2 if keep is None else keep])


def _gzip_bytes(path: Path) -> bytes:
    return gzip.compress(path.read_bytes())


def _truncated_gzip(d: Path) -> list:
    (d / "t.jsonl.gz").write_bytes(_gzip_bytes(d / "t.jsonl")[:-30])
    return ["eval", "--reward", "m", "--data", "t.jsonl.gz"]


def _corrupt_gzip(d: Path) -> list:
    data = bytearray(_gzip_bytes(d / "t.jsonl"))
    data[40:60] = b"\x00" * 20
    (d / "t.jsonl.gz").write_bytes(bytes(data))
    return ["eval", "--reward", "m", "--data", "t.jsonl.gz"]


def _plain_as_gzip(d: Path) -> list:
    shutil.copy(d / "t.jsonl", d / "t.jsonl.gz")
    return ["eval", "--reward", "m", "--data", "t.jsonl.gz"]


def _non_utf8(d: Path) -> list:
    (d / "bad.jsonl").write_bytes((d / "t.jsonl").read_bytes() + b'{"prompt": "\xff\xfe", "chosen": "a", "rejected": "b"}\n')
    return ["eval", "--reward", "m", "--data", "bad.jsonl"]


def _non_utf8_csv(d: Path) -> list:
    (d / "bad.csv").write_bytes(b"prompt,chosen,rejected\nq,a,b\nq,\xff,b\n")
    return ["eval", "--reward", "m", "--data", "bad.csv"]


def _corrupt_parquet(d: Path) -> list:
    (d / "bad.parquet").write_bytes(b"PAR1 this is not parquet")
    return ["eval", "--reward", "m", "--data", "bad.parquet"]


def _model_file(relative: str, keep: int | None = None, text: str | None = None):
    def setup(d: Path) -> list:
        if text is None:
            _corrupt(d / "m" / relative, keep)
        else:
            (d / "m" / relative).write_text(text)
        return ["score", "--reward", "m", "--input", "s.jsonl", "--output", "out.jsonl"]

    return setup


def _posterior(d: Path) -> list:
    (d / "m" / "posterior.json").write_text('{"format_version": 1, ')
    return ["score", "--reward", "m", "--input", "s.jsonl", "--output", "out.jsonl"]


def _resume_with(relative: str):
    def setup(d: Path) -> list:
        _corrupt(d / "run" / "checkpoints" / "step-3" / relative)
        return ["train", "--data", "t.jsonl", "--output-dir", "run", *MODEL_OPTIONS, "--epochs", "2", "--save-every", "1", "--resume"]

    return setup


def _alias_cycle(d: Path) -> list:
    (d / "cycle.yaml").write_text("&top\nkind: ensemble\nmembers:\n  - name: a\n    source: *top\n")
    return ["score", "--reward", "cycle.yaml", "--input", "s.jsonl", "--output", "out.jsonl"]


def _tree(name: str, node: dict):
    def setup(d: Path) -> list:
        (d / name).write_text(yaml.safe_dump(node))
        return ["score", "--reward", name, "--input", "s.jsonl", "--output", "out.jsonl"]

    return setup


def _pairs_with(field: str, value, raw: str | None = None):
    def setup(d: Path) -> list:
        row = {**arithmetic_pairs(1, seed=5)[0], field: value}
        write_rows(d / "bad.jsonl", [raw if raw is not None else row])
        return ["train", "--data", "bad.jsonl", "--output-dir", "out", *MODEL_OPTIONS]

    return setup


def _train_with(*options: str):
    return lambda d: ["train", "--data", "t.jsonl", "--output-dir", "out", *MODEL_OPTIONS, *options]


def _yaml_config(d: Path) -> list:
    (d / "c.yaml").write_text("model: tiny-random\nmax_length: 64\nlearning_rate: -0.1\n")
    return ["train", "--data", "t.jsonl", "--output-dir", "out", "--config", "c.yaml"]


def _score_rows(rows: list):
    def setup(d: Path) -> list:
        write_rows(d / "rows.jsonl", rows)
        return ["score", "--reward", "m", "--input", "rows.jsonl", "--output", "out.jsonl"]

    return setup


def _output_under_file(command: str):
    """The output goes under a path that is a file; the reward tree raises if it is ever scored, so the
    error must come from the output check, before any work."""

    def setup(d: Path) -> list:
        (d / "afile").write_text("mine\n")
        if command == "score":
            return ["score", "--reward", "tree.yaml", "--input", "s.jsonl", "--output", "afile/out.jsonl"]
        if command == "eval":
            return ["eval", "--reward", "tree.yaml", "--data", "t.jsonl", "--output", "afile/m.json"]
        if command == "bon":
            return ["bon", "--reward", "tree.yaml", "--pools", "p.jsonl", "--output-dir", "afile/bon"]
        return ["compose", "calibrate", "--tree", "tree.yaml", "--data", "s.jsonl", "--output", "afile/tree.yaml"]

    return setup


def _occupied_output_dir(command: str):
    def setup(d: Path) -> list:
        (d / "mine").mkdir()
        (d / "mine" / "config.yaml").write_text("my own notes\n")
        if command == "train":
            return ["train", "--data", "t.jsonl", "--output-dir", "mine", *MODEL_OPTIONS]
        if command == "bon":
            return ["bon", "--reward", "m", "--pools", "p.jsonl", "--output-dir", "mine"]
        return ["optimize", "--reward", "bandit.yaml", "--prompts", "q.jsonl", "--output-dir", "mine", "--policy", "tiny-random"]

    return setup


def _laplace_with(*options: str):
    return lambda d: ["laplace", "--model-dir", "m", "--data", "t.jsonl", *options]


def _bon_with(*options: str):
    return lambda d: ["bon", "--reward", "m", "--pools", "p.jsonl", "--output-dir", "bon", *options]


def _unsafe_rule(d: Path) -> list:
    (d / "unsafe.yaml").write_text(yaml.safe_dump({"kind": "rule", "function": "shutil:copyfile"}))
    return ["score", "--reward", "unsafe.yaml", "--input", "s.jsonl", "--output", "out.jsonl"]


def _serve_unsafe_rule(d: Path) -> list:
    (d / "unsafe.yaml").write_text(yaml.safe_dump({"kind": "rule", "function": "os:remove"}))
    return ["serve", "--reward", "unsafe.yaml", "--port", "1"]


def _bandit_state(d: Path) -> list:
    tree = yaml.safe_load((d / "bandit.yaml").read_text())
    (d / "state.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\": 1")
    (d / "bandit.yaml").write_text(yaml.safe_dump({**tree, "state": "state.safetensors"}))
    return ["bon", "--reward", "bandit.yaml", "--pools", "p.jsonl", "--feedback", "gold", "--output-dir", "bon"]


CASES = [
    # files that cannot be read
    Case("non-UTF-8 line", _non_utf8, ("bad.jsonl", "row 9", "UTF-8")),
    Case("non-UTF-8 csv", _non_utf8_csv, ("bad.csv", "row 2", "UTF-8")),
    Case("truncated gzip", _truncated_gzip, ("t.jsonl.gz", "truncated")),
    Case("corrupt gzip", _corrupt_gzip, ("t.jsonl.gz", "corrupt")),
    Case("plain text named .gz", _plain_as_gzip, ("t.jsonl.gz", "not a gzip file")),
    Case("corrupt parquet", _corrupt_parquet, ("bad.parquet",)),
    Case("invalid JSON file", lambda d: (d / "x.json").write_text("[{") and ["eval", "--reward", "m", "--data", "x.json"], ("x.json", "invalid JSON")),
    Case("missing data file", lambda d: ["eval", "--reward", "m", "--data", "nowhere/x.jsonl"], ("nowhere/x.jsonl", "no such file")),
    Case("truncated head", _model_file("head.safetensors"), ("head.safetensors",)),
    Case("truncated adapter", _model_file("adapter/adapter_model.safetensors", keep=20), ("adapter_model.safetensors",)),
    Case("invalid rewardstack.json", _model_file("rewardstack.json", text="{"), ("rewardstack.json", "invalid JSON")),
    Case("invalid tokenizer.json", _model_file("tokenizer/tokenizer.json", text="{"), ("tokenizer",)),
    Case("invalid adapter_config.json", _model_file("adapter/adapter_config.json", text="{"), ("adapter_config.json",)),
    Case("invalid posterior.json", _posterior, ("posterior.json",)),
    Case("corrupt checkpoint weights", _resume_with("trainable.safetensors"), ("step-3", "trainable.safetensors", "step-2")),
    Case("corrupt checkpoint state", _resume_with("state.pt"), ("step-3", "state.pt", "step-2")),
    Case("corrupt bandit state", _bandit_state, ("state.safetensors",)),
    Case("YAML alias cycle", _alias_cycle, ("cycle.yaml", "source.members[0].source", "itself")),
    Case("invalid YAML config", lambda d: (d / "c.yaml").write_text("a: [") and _train_with("--config", "c.yaml")(d), ("c.yaml", "invalid YAML")),
    Case("rule that raises", lambda d: ["score", "--reward", "tree.yaml", "--input", "s.jsonl", "--output", "out.jsonl"],
         ("raises:reward", "row 1", "ZeroDivisionError")),
    # numbers
    Case("margin NaN", _pairs_with("margin", None, raw='{"prompt": "q", "chosen": "a", "rejected": "b", "margin": NaN}'), ("bad.jsonl", "row 1", "'margin'")),
    Case("margin Infinity", _pairs_with("margin", None, raw='{"prompt": "q", "chosen": "a", "rejected": "b", "margin": Infinity}'), ("row 1", "'margin'")),
    Case("margin 'inf'", _pairs_with("margin", "inf"), ("row 1", "'margin'", "finite")),
    Case("negative learning rate", _train_with("--learning-rate", "-1e-4"), ("learning_rate",)),
    Case("learning rate in YAML", _yaml_config, ("c.yaml", "learning_rate")),
    Case("LoRA dropout 1", _train_with("--lora-dropout", "1"), ("lora_dropout",)),
    Case("LoRA dropout negative", _train_with("--lora-dropout", "-0.1"), ("lora_dropout",)),
    Case("max length too short", _train_with("--max-length", "4"), ("max_length",)),
    Case("max prompt length too long", _train_with("--max-prompt-length", "64"), ("max_prompt_length",)),
    Case("negative save-every", _train_with("--save-every", "-1"), ("save_every",)),
    Case("negative eval-every", _train_with("--eval-every", "-2"), ("eval_every",)),
    Case("zero epochs", _train_with("--epochs", "0"), ("epochs",)),
    Case("unknown objective", _train_with("--objective", "ppo"), ("objective",)),
    Case("negative weight decay", _train_with("--weight-decay", "-1"), ("weight_decay",)),
    Case("score batch size 0", lambda d: ["score", "--reward", "m", "--input", "s.jsonl", "--output", "o.jsonl", "--batch-size", "0"], ("--batch-size",)),
    Case("bon n 0", lambda d: ["bon", "--reward", "m", "--prompts", "q.jsonl", "--output-dir", "bon", "--n", "0"], ("--n",)),
    Case("bon negative temperature", _bon_with("--temperature", "-1"), ("--temperature",)),
    Case("bon top-p above 1", _bon_with("--top-p", "1.5"), ("--top-p",)),
    Case("bon unknown objective", _bon_with("--objective", "median"), ("median",)),
    Case("laplace unknown subset", _laplace_with("--subset", "everything"), ("subset",)),
    Case("laplace unknown prior", _laplace_with("--prior", "guess"), ("prior",)),
    Case("laplace val without data", _laplace_with("--prior", "val"), ("--val-data",)),
    Case("optimize zero iterations", lambda d: ["optimize", "--reward", "bandit.yaml", "--prompts", "q.jsonl", "--output-dir", "o",
                                                "--iterations", "0", "--policy", "tiny-random"], ("iterations",)),
    Case("serve port out of range", lambda d: ["serve", "--reward", "m", "--port", "70000"], ("--port",)),
    # roles and rows
    Case("unknown role in pairs", _pairs_with("prompt", [{"role": "hacker", "content": "hi"}]), ("bad.jsonl", "row 1", "'prompt'", "hacker")),
    Case("unknown role in score rows", _score_rows([{"prompt": [{"role": "user", "content": "q"}, {"role": "hacker", "content": "x"}], "response": "r"}]),
         ("rows.jsonl", "row 1", "'prompt'", "hacker")),
    Case("missing field", _score_rows([{"prompt": "q"}]), ("rows.jsonl", "row 1", "'response'", "missing")),
    # where results go
    Case("score output under a file", _output_under_file("score"), ("--output", "afile")),
    Case("eval output under a file", _output_under_file("eval"), ("--output", "afile")),
    Case("bon output under a file", _output_under_file("bon"), ("--output-dir", "afile")),
    Case("compose output under a file", _output_under_file("compose"), ("--output", "afile")),
    Case("score output not writable", lambda d: ["score", "--reward", "tree.yaml", "--input", "s.jsonl", "--output", "/proc/rewardstack/out.jsonl"],
         ("--output", "/proc/rewardstack")),
    Case("train into a user's folder", _occupied_output_dir("train"), ("mine", "config.yaml")),
    Case("bon into a user's folder", _occupied_output_dir("bon"), ("mine", "config.yaml")),
    Case("optimize into a user's folder", _occupied_output_dir("optimize"), ("mine", "config.yaml")),
    Case("train over a run without --resume", lambda d: ["train", "--data", "t.jsonl", "--output-dir", "run", *MODEL_OPTIONS], ("run", "--resume")),
    # reward trees
    Case("rule module not allowed", _unsafe_rule, ("source", "shutil", "--allow-rule-module")),
    Case("served rule module not allowed", _serve_unsafe_rule, ("source", "os", "--allow-rule-module")),
    Case("API key written in the tree", _tree("remote.yaml", {"kind": "remote", "url": "http://127.0.0.1:9", "api_key": "secret"}), ("source", "api_key_env")),
    Case("API key variable unset", _tree("remote.yaml", {"kind": "remote", "url": "http://127.0.0.1:9", "api_key_env": "RS_TEST_UNSET_KEY"}),
         ("source", "RS_TEST_UNSET_KEY")),
    Case("unknown node kind", _tree("k.yaml", {"kind": "oracle"}), ("source", "kind")),
]


def _invoke(main, args: list) -> int:
    """main() with `args`; its exit code (0 when it returns)."""
    saved = sys.argv
    sys.argv = ["rewardstack", *map(str, args)]
    try:
        main()
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    finally:
        sys.argv = saved
    return 0


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*")) if "__pycache__" not in p.parts}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case, base, tmp_path, monkeypatch, capfd):
    from rewardstack.cli import main

    folder = tmp_path / "case"
    shutil.copytree(base, folder)
    monkeypatch.chdir(folder)
    args = case.setup(folder)
    before = _snapshot(folder)
    capfd.readouterr()
    code = _invoke(main, args)
    out, err = capfd.readouterr()
    lines = err.strip().splitlines()
    assert code == 2, err[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), err[-3000:]
    for expected in case.expect:
        assert expected in lines[0], lines[0]
    assert _snapshot(folder) == before


def test_missing_data_file_is_not_looked_up_online(tmp_path):
    """The CLI is offline from its first import: a missing local file is reported at once, never sent to
    the Hugging Face hub."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "REWARDSTACK_ALLOW"))}
    result = subprocess.run([sys.executable, "-m", "rewardstack.cli", "train", "--data", "sub/missing.jsonl", "--output-dir", tmp_path / "r",
                             *MODEL_OPTIONS], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: sub/missing.jsonl: no such file"


def test_python_api_is_offline_from_import():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "REWARDSTACK_ALLOW"))}
    code = "import huggingface_hub as h, rewardstack, datasets; print(h.is_offline_mode(), datasets.config.HF_HUB_OFFLINE)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.stdout.split() == ["True", "True"], result.stderr[-2000:]
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**env, "REWARDSTACK_ALLOW_DOWNLOAD": "1"}, timeout=120)
    assert result.stdout.split() == ["False", "False"], result.stderr[-2000:]


# The server: each request's failure is its own, the event loop stays free, and nothing private leaks.

class PerRow:
    """A source whose reward is the response's length; a prompt "poison" is a UserError naming it, and a
    prompt "nan" gives a NaN reward. The first call waits `hold` seconds (so later requests queue up)."""

    def __init__(self, hold: float = 0.0):
        self.hold, self.calls = hold, 0

    def score(self, prompts, responses, batch_size=16):
        from rewardstack.errors import UserError
        from rewardstack.sources import RewardScores

        self.calls += 1
        if self.calls == 1:
            time.sleep(self.hold)
        if "poison" in prompts:
            raise UserError(f"no reward for the prompt {prompts[prompts.index('poison')]!r}")
        return RewardScores(mean=np.array([float("nan") if p == "nan" else float(len(r)) for p, r in zip(prompts, responses)]))


def test_server_rejects_empty_and_nan_prompts_with_422():
    from test_server import call, running

    with running(PerRow()) as (url, _):
        status, answer, _ = call(url + "/v1/score", {"items": [{"prompt": [], "response": "r"}]})
        assert status == 422 and any(d["loc"][:4] == ["body", "items", 0, "prompt"] for d in answer["detail"])
        status, answer, _ = call(url + "/v1/score", raw=b'{"items": [{"prompt": NaN, "response": "r"}]}')
        assert status == 422 and all("input" not in d for d in answer["detail"])
        assert any(d["loc"][:4] == ["body", "items", 0, "prompt"] for d in answer["detail"])
        status, answer, _ = call(url + "/v1/score", {"prompt": "nan", "responses": ["abc"]})
        assert status == 500 and "non-finite reward (nan) for row 0" in answer["detail"]


def test_one_bad_request_fails_alone_in_a_batch():
    from test_server import call, running

    source = PerRow(hold=0.5)
    bodies = [{"prompt": "warm", "responses": ["w"]}, {"prompt": "a", "responses": ["xx", "xxx"]}, {"prompt": "poison", "responses": ["y"]},
              {"prompt": "b", "responses": ["zzzzz"]}]
    with running(source, max_wait_ms=50) as (url, _):
        answers = [None] * len(bodies)

        def send(i):
            answers[i] = call(url + "/v1/score", bodies[i])

        threads = [threading.Thread(target=send, args=(0,))]
        threads[0].start()
        time.sleep(0.2)  # the first request holds the scorer; the other three queue and form one batch
        threads += [threading.Thread(target=send, args=(i,)) for i in (1, 2, 3)]
        for thread in threads[1:]:
            thread.start()
        for thread in threads:
            thread.join(30)
        info = call(url + "/v1/info")[1]
    assert info["stats"]["largest_batch_requests"] == 3
    assert answers[1][:2] == (200, {"rewards": [2.0, 3.0], "std": None, "parts": {}, "arm": None, "truncated": 0})
    assert answers[3][:2] == (200, {"rewards": [5.0], "std": None, "parts": {}, "arm": None, "truncated": 0})
    assert answers[2][0] == 422 and answers[2][1]["detail"] == "no reward for the prompt 'poison'"


def test_health_answers_while_a_large_request_is_sized(tmp_path):
    """Token counting runs off the event loop: while a 4 MB request is being sized (held there by the test),
    /health still answers; a loop blocked by it would time out here."""
    from test_server import call, running

    model = RewardModel.create(ModelConfig(model="tiny-random", max_length=64, lora_r=2))
    sizing, release = threading.Event(), threading.Event()
    original = model.encoder.encode

    def held(*args, **kwargs):
        sizing.set()
        release.wait(30)
        return original(*args, **kwargs)

    model.encoder.encode = held
    with running(model) as (url, _):
        big: list = []
        thread = threading.Thread(target=lambda: big.append(call(url + "/v1/score", {"prompt": "p", "responses": ["x" * 4_000_000]})))
        thread.start()
        assert sizing.wait(30)
        assert call(url + "/health")[:2] == (200, {"status": "ok"}) and not big  # answered while the big request is held
        release.set()
        thread.join(60)
    assert big[0][0] == 200 and big[0][1]["truncated"] == 1


def test_info_and_errors_show_no_secrets_or_absolute_paths(tmp_path, base):
    from rewardstack.server.app import describe
    from rewardstack.sources import load_source
    from test_server import call, running

    shutil.copytree(base / "m", tmp_path / "m")
    tree = tmp_path / "tree.yaml"
    tree.write_text(yaml.safe_dump({"kind": "ensemble", "members": [
        {"name": "rm", "source": {"kind": "model", "path": str(tmp_path / "m")}},
        {"name": "far", "source": {"kind": "remote", "url": "http://ann:pw@127.0.0.1:9/rm?token=abc&v=2", "timeout": 2}}]}))
    with running(load_source(tree), describe(str(tree))) as (url, _):
        info = call(url + "/v1/info")[1]
        status, answer, _ = call(url + "/v1/score", {"prompt": "p", "responses": ["r"]})
    assert info["reward"] == "tree.yaml" and "folder" not in info
    assert describe("owner/some-rm")["tree"] == {"kind": "model", "path": "owner/some-rm"}  # a Hub id is shown as it is
    assert info["tree"]["members"][0]["source"]["path"] == "m"
    assert info["tree"]["members"][1]["source"]["url"] == "http://***@127.0.0.1:9/rm?token=***&v=2"
    assert status == 422 and answer["detail"].startswith("remote http://***@127.0.0.1:9/rm?token=***&v=2/v1/score: cannot reach")
    assert str(tmp_path) not in json.dumps(info) + answer["detail"] and "pw" not in answer["detail"]


def test_remote_sends_the_key_from_its_environment_variable(monkeypatch):
    from rewardstack.errors import UserError
    from rewardstack.sources import build_source
    from test_server import running

    with running(PerRow(), api_key="k3y") as (url, _):
        monkeypatch.setenv("RS_TEST_KEY", "k3y")
        keyed = build_source({"kind": "remote", "url": url, "api_key_env": "RS_TEST_KEY"})
        assert keyed.score(["p", "q"], ["ab", "abcd"]).mean.tolist() == [2.0, 4.0]
        with pytest.raises(UserError, match="HTTP 401"):
            build_source({"kind": "remote", "url": url}).score(["p"], ["ab"])


def test_a_model_with_non_finite_weights_is_refused(tmp_path, base, capfd):
    """A model saved from a diverged run (before training stopped such runs) would score NaN: loading names it."""
    from safetensors.torch import save_file

    from rewardstack.cli import main

    shutil.copytree(base / "m", tmp_path / "m")
    save_file({"weight": torch.full((1, 32), float("nan"))}, tmp_path / "m" / "head.safetensors")
    assert _invoke(main, ["score", "--reward", tmp_path / "m", "--input", base / "s.jsonl", "--output", tmp_path / "o.jsonl"]) == 2
    assert "weight head.weight holds values that are not finite" in capfd.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()


def test_a_commands_own_output_folder_is_reused_and_others_refused(base, tmp_path, monkeypatch, capfd):
    """bon may write again into its own earlier output (marked .rewardstack-run); train into bon's may not."""
    from rewardstack.cli import main

    monkeypatch.chdir(base)
    for _ in range(2):
        assert _invoke(main, ["bon", "--reward", "m", "--pools", "p.jsonl", "--output-dir", tmp_path / "bon"]) == 0
    assert json.loads((tmp_path / "bon" / ".rewardstack-run").read_text()) == {"command": "bon"}
    capfd.readouterr()
    assert _invoke(main, ["train", "--data", "t.jsonl", "--output-dir", tmp_path / "bon", *MODEL_OPTIONS]) == 2
    assert "holds a rewardstack bon run, not a train run" in capfd.readouterr().err
