import json
import math
import re
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import numpy as np
import pytest
import yaml

from rewardstack.errors import UserError
from rewardstack.sources import Ensemble, Hierarchical, Normalized, RewardScores, Rule, build_source, calibrate_tree, load_source
from rewardstack.sources.combine import combine_ensemble, combine_hierarchy
from rewardstack.sources.select import aspect_consistency
from rewardstack.sources.remote import Remote

from conftest import cli, write_rows


class Fixed:
    """A source with given rewards (and stds) per response text."""

    def __init__(self, table: dict[str, float], stds: dict[str, float] | None = None):
        self.table, self.stds = table, stds

    def score(self, prompts, responses, batch_size=16):
        std = None if self.stds is None else np.array([self.stds[r] for r in responses])
        return RewardScores(mean=np.array([self.table[r] for r in responses]), std=std)


def word_count(prompt: str, response: str) -> float:
    """A rule for the module:function test."""
    return float(len(response.split()))


def test_ensemble_rules_by_hand():
    means = np.array([[1.0, 0.0], [3.0, 0.0], [2.0, 3.0]])  # 3 members, 2 rows
    # row 0: mean 2, population variance ((1)+(1)+0)/3 = 2/3; row 1: mean 1, variance (1+1+4)/3 = 2
    assert combine_ensemble(means, None, "mean").mean.tolist() == pytest.approx([2.0, 1.0])
    assert combine_ensemble(means, None, "min").mean.tolist() == [1.0, 0.0]
    assert combine_ensemble(means, None, "uwo", 0.5).mean.tolist() == pytest.approx([2 - 1 / 3, 0.0])
    assert combine_ensemble(means, None, "weighted", weights=[0.5, 0.25, 0.25]).mean.tolist() == pytest.approx([1.75, 0.75])
    assert combine_ensemble(means, None, "mean").std.tolist() == pytest.approx([np.sqrt(2 / 3), np.sqrt(2)])
    stds = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 3.0]])  # + mean of member variances: 1 and 3
    assert combine_ensemble(means, stds, "mean").std.tolist() == pytest.approx([np.sqrt(2 / 3 + 1), np.sqrt(5)])
    with pytest.raises(ValueError, match="one weight per member") as err:
        combine_ensemble(means, None, "weighted", weights=[1.0])
    assert type(err.value) is ValueError  # math code; the Ensemble source checks its weights as a UserError first


def test_hierarchy_modes_by_hand():
    holistic = np.array([-1.0, 0.5, 2.0])
    aspects = np.array([[1.0, -1.0, 0.5], [2.0, 2.0, -2.0]])
    weights = [0.5, 0.25]  # Σ w_i a_i = [1.0, 0.0, -0.25]
    assert combine_hierarchy(holistic, aspects, "holistic", holistic_weight=2.0)[0].tolist() == [-2.0, 1.0, 4.0]
    assert combine_hierarchy(holistic, aspects, "aspects", aspect_weights=weights)[0].tolist() == [1.0, 0.0, -0.25]
    assert combine_hierarchy(holistic, aspects, "weighted_sum", aspect_weights=weights)[0].tolist() == [0.0, 0.5, 1.75]
    reward, gate = combine_hierarchy(holistic, aspects, "hierarchical", threshold=0.5, aspect_weights=weights)
    assert gate.tolist() == [0.0, 1.0, 1.0] and reward.tolist() == [-1.0, 0.5, 1.75]
    with pytest.raises(ValueError, match="mode must be one of") as err:
        combine_hierarchy(holistic, aspects, "sum")
    assert type(err.value) is ValueError


def test_composite_sources_carry_parts_and_stds():
    h = Fixed({"a": 1.0, "b": -1.0}, {"a": 0.5, "b": 1.0})
    x = Fixed({"a": 2.0, "b": 4.0}, {"a": 1.0, "b": 1.0})
    scores = Hierarchical(h, {"x": (x, 0.5)}, "hierarchical", threshold=0.0, holistic_weight=2.0).score(["p", "p"], ["a", "b"])
    assert scores.mean.tolist() == [3.0, -2.0]
    assert scores.parts == {"holistic": pytest.approx([1.0, -1.0]), "x": pytest.approx([2.0, 4.0])}  # component rewards only
    # √(w_h² σ_h² + gate w² σ_x²): row a √(4·0.25 + 0.25·1), row b √(4·1)
    assert scores.std.tolist() == pytest.approx([np.sqrt(1.25), 2.0])
    ensemble = Ensemble({"h": h, "x": x}, "min").score(["p", "p"], ["a", "b"])
    assert ensemble.mean.tolist() == [1.0, -1.0] and set(ensemble.parts) == {"h", "x"}
    normalized = Normalized(x, mean=3.0, std=2.0).score(["p", "p"], ["a", "b"])
    assert normalized.mean.tolist() == [-0.5, 0.5] and normalized.std.tolist() == [0.5, 0.5]


def test_rules_builtin_and_imported(tmp_path):
    write_rows(tmp_path / "answers.jsonl", [{"prompt": "What is 2 + 3?", "answer": "5"}])
    tree = {
        "kind": "ensemble", "combine": "weighted", "weights": [1.0, 10.0, 100.0, 1000.0],
        "members": [
            {"name": "answer", "source": {"kind": "rule", "builtin": "answer", "answers": "answers.jsonl"}},
            {"name": "length", "source": {"kind": "rule", "builtin": "length"}},
            {"name": "format", "source": {"kind": "rule", "builtin": "regex", "pattern": "^the answer", "ignore_case": True}},
            {"name": "words", "source": {"kind": "rule", "function": "test_sources:word_count"}},
        ],
    }
    source = build_source(tree, tmp_path, allowed_modules=["test_sources"])
    scores = source.score(["What is 2 + 3?", [{"role": "user", "content": "What is 2 + 3?"}]], ["The answer is 5.", "It is 6"])
    assert scores.parts["answer"].tolist() == [1.0, 0.0]
    assert scores.parts["length"].tolist() == [4.0, 3.0]
    assert scores.parts["format"].tolist() == [1.0, 0.0]
    assert scores.mean.tolist() == [1.0 + 40.0 + 100.0 + 4000.0, 30.0 + 3000.0]
    with pytest.raises(UserError, match="no reference answer"):
        source.score(["What is 1 + 1?"], ["2"])
    with pytest.raises(UserError, match="cannot load it"):
        build_source({"kind": "rule", "function": "test_sources:missing"}, allowed_modules=["test_sources"])
    with pytest.raises(UserError, match="row 1 gave 'x', not a finite number"):
        Rule(lambda p, r: "x", "bad").score(["p"], ["r"])


def test_tree_errors_name_the_node(tmp_path):
    with pytest.raises(UserError, match=r"source.members\[1\].source: a node needs `kind`"):
        build_source({"kind": "ensemble", "members": [{"source": {"kind": "rule", "builtin": "length"}}, {"source": {"kind": "nope"}}]})
    with pytest.raises(UserError, match=r"source.aspects\[0\].source: hierarchical rewards combine normalised sources"):
        build_source({"kind": "hierarchical", "holistic": {"kind": "rule", "builtin": "length", "normalize": {"mean": 0, "std": 1}},
                      "aspects": [{"name": "f", "source": {"kind": "rule", "builtin": "regex", "pattern": "x"}}]})
    with pytest.raises(UserError, match="not fitted yet"):
        build_source({"kind": "rule", "builtin": "length", "normalize": "calibrate"})
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: [unclosed")
    with pytest.raises(UserError, match="bad.yaml: not valid YAML"):
        load_source(bad)


def test_calibrate_yaml_round_trip(tmp_path):
    tree = {
        "kind": "hierarchical", "mode": "hierarchical", "threshold": 0.0,
        "holistic": {"kind": "rule", "builtin": "length", "unit": "characters", "normalize": "calibrate"},
        "aspects": [{"name": "format", "weight": 0.5, "source": {"kind": "rule", "builtin": "regex", "pattern": "!", "normalize": "calibrate"}}],
    }
    responses = ["hi", "hello!", "hey there!", "good day"]  # lengths 2, 6, 10, 8: mean 6.5, variance 35/4
    fitted = calibrate_tree(tree, tmp_path, ["p"] * 4, responses, data_name="rows.jsonl")
    assert fitted["holistic"]["normalize"] == {"mean": 6.5, "std": pytest.approx(np.sqrt(8.75)), "calibrated_on": "rows.jsonl", "rows": 4}
    assert fitted["aspects"][0]["source"]["normalize"]["mean"] == 0.5 and tree["holistic"]["normalize"] == "calibrate"
    path = tmp_path / "tree.yaml"
    path.write_text(yaml.safe_dump(fitted))
    scores = load_source(path).score(["p"] * 4, responses)
    z = (np.array([2, 6, 10, 8]) - 6.5) / np.sqrt(8.75)
    expected = z + (z >= 0) * 0.5 * np.array([-1.0, 1.0, 1.0, -1.0])  # regex: 0/1 with mean ½, std ½
    assert scores.mean.tolist() == pytest.approx(expected.tolist())
    assert yaml.safe_load(path.read_text()) == fitted


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path == "/get_reward":  # OpenRLHF: full texts in, rewards out
            answer = {"rewards": [float(len(q)) for q in body["query"]]}
        elif self.path in ("/classify", "/v1/two-classes"):  # vLLM / SGLang: items in reverse order, as any order is allowed
            assert body["activation"] is False and body["use_activation"] is False
            probs = [[float(len(t))] + ([0.5] if self.path == "/v1/two-classes" else []) for t in body["input"]]
            answer = {"object": "list", "model": body.get("model", "served"),
                      "data": [{"index": i, "label": "x", "probs": probs[i], "num_classes": len(probs[i])} for i in reversed(range(len(probs)))]}
        elif self.path == "/v1/score":
            n = len(body["items"])
            answer = {"rewards": [float(len(item["response"])) for item in body["items"]], "std": [1.0] * n, "parts": {"n": [0.0] * n}}
        else:
            self.send_error(404)
            return
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = HTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_remote_source_speaks_both_protocols(server, tmp_path):
    prompts, responses = ["ab", "c"], ["xyz", "hello"]
    ours = Remote(server, batch_size=1).score(prompts, responses)  # two requests of one row
    assert ours.mean.tolist() == [3.0, 5.0] and ours.std.tolist() == [1.0, 1.0] and ours.parts["n"].tolist() == [0.0, 0.0]
    openrlhf = Remote(server, protocol="openrlhf").score(prompts, responses)
    assert openrlhf.mean.tolist() == [len("ab\nxyz"), len("c\nhello")]
    classify = Remote(server, protocol="classify", batch_size=1 + 1).score(prompts + ["d"], responses + ["four"])
    assert classify.mean.tolist() == [len("ab\nxyz"), len("c\nhello"), len("d\nfour")]  # by index, not by arrival order
    with pytest.raises(UserError, match="item 1 has 2 scores; a reward model gives one"):
        Remote(server, protocol="classify", path="/v1/two-classes").score(prompts, responses)
    with pytest.raises(UserError, match="HTTP 404"):
        Remote(server + "/missing").score(prompts, responses)
    with pytest.raises(UserError, match="cannot reach the server"):
        Remote("http://127.0.0.1:9", timeout=2).score(prompts, responses)
    tree = tmp_path / "remote.yaml"
    tree.write_text(yaml.safe_dump({"kind": "remote", "url": server}))
    rows = write_rows(tmp_path / "rows.jsonl", [{"prompt": "q", "response": "four"}])
    cli("score", "--reward", tree, "--input", rows, "--output", tmp_path / "out.jsonl")
    scored = json.loads((tmp_path / "out.jsonl").read_text())
    assert scored["reward"] == 4.0 and scored["reward_std"] == 1.0 and scored["reward_parts"] == {"n": 0.0}


def test_aspect_consistency_by_hand():
    holistic = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0], [1.0, 1.0]])  # prefers first, second, first, tie
    aspect = np.array([[5.0, 1.0], [3.0, 2.0], [0.0, 0.0], [1.0, 0.0]])  # first, first, tie, first
    result = aspect_consistency(holistic, aspect)
    # compared: pairs 0 and 1 (2 and 3 have a tie); pair 1 disagrees → 1/2; win: 1, 0, ½, ½ → 0.5
    assert result == {"compared": 2, "inconsistency": 0.5, "win_rate": 0.5}


def test_select_aspects_cli_keeps_the_consistent_ones(tmp_path):
    pools = write_rows(tmp_path / "pools.jsonl", [
        {"prompt": f"q{i}", "responses": [short, long_]}
        for i, (short, long_) in enumerate([("ok!", "a much longer answer"), ("fine", "another longer reply!"), ("no", "a long one")])
    ])
    fixed = {"mean": 0, "std": 1}
    tree = {
        "kind": "hierarchical",
        "holistic": {"kind": "rule", "builtin": "length", "normalize": fixed},
        "aspects": [
            {"name": "chars", "weight": 1.0, "source": {"kind": "rule", "builtin": "length", "unit": "characters", "normalize": fixed}},
            {"name": "shortness", "weight": 1.0, "source": {"kind": "rule", "function": "my_rules:negative_length", "normalize": fixed}},
            {"name": "bang", "weight": 1.0, "source": {"kind": "rule", "builtin": "regex", "pattern": "!", "normalize": fixed}},
        ],
    }
    config = tmp_path / "tree.yaml"
    config.write_text(yaml.safe_dump(tree))
    (tmp_path / "my_rules.py").write_text("def negative_length(prompt, response):\n    return -float(len(response))\n")
    result = cli("compose", "select-aspects", "--tree", config, "--pools", pools, "--output", tmp_path / "selected.yaml")
    lines = {line.split()[0]: line.split() for line in result.stdout.splitlines()[2:5]}
    assert lines["chars"][1:] == ["3", "0.000", "1.000", "yes"]
    assert lines["shortness"][1:] == ["3", "1.000", "0.000", "no"]
    selected = yaml.safe_load((tmp_path / "selected.yaml").read_text())
    assert [a["name"] for a in selected["aspects"]] == ["chars", "bang"]
    bad = cli("compose", "select-aspects", "--tree", config, "--pools", pools, "--output", tmp_path / "sub" / "x.yaml", check_rc=2)
    assert "write --output beside --tree" in bad.stderr


def test_model_in_a_tree_through_eval_and_calibrate_cli(tmp_path):
    import torch

    from rewardstack.model import ModelConfig, RewardModel
    from rewardstack.synthetic import arithmetic_pairs, write_jsonl

    model = RewardModel.create(ModelConfig(model="tiny-random", max_length=256, lora_r=4))
    torch.nn.init.normal_(model.head.weight, std=0.1)  # a head that is not zero, so rewards differ
    model.save(tmp_path / "model")
    pairs = write_jsonl(arithmetic_pairs(6, seed=2), tmp_path / "pairs.jsonl")
    rows = write_rows(tmp_path / "rows.jsonl", [{"prompt": r["prompt"], "response": r[k]} for r in arithmetic_pairs(6, seed=3) for k in ("chosen", "rejected")])
    config = tmp_path / "tree.yaml"
    config.write_text(yaml.safe_dump({"kind": "ensemble", "combine": "mean", "members": [
        {"name": "rm", "source": {"kind": "model", "path": "model", "normalize": "calibrate"}},
        {"name": "words", "source": {"kind": "rule", "builtin": "length", "normalize": "calibrate"}},
    ]}))
    result = cli("eval", "--reward", config, "--data", pairs, check_rc=2)
    assert "not fitted yet: run `rewardstack compose calibrate`" in result.stderr
    cli("compose", "calibrate", "--tree", config, "--data", rows, "--output", config)
    tree = yaml.safe_load(config.read_text())
    scores = load_source(config).score(*zip(*[(r["prompt"], r["response"]) for r in map(json.loads, rows.read_text().splitlines())]))
    for part in scores.parts.values():  # the members' rewards, z-scored on the calibration rows
        assert part.mean() == pytest.approx(0.0, abs=1e-6) and part.std() == pytest.approx(1.0, abs=1e-6)
    assert scores.mean.tolist() == pytest.approx(((scores.parts["rm"] + scores.parts["words"]) / 2).tolist())
    assert tree["members"][1]["source"]["normalize"]["rows"] == 12
    cli("eval", "--reward", config, "--data", pairs, "--output", tmp_path / "m.json")
    metrics = json.loads((tmp_path / "m.json").read_text())[str(pairs)]
    source, written = load_source(config), arithmetic_pairs(6, seed=2)
    chosen = source.score([r["prompt"] for r in written], [r["chosen"] for r in written]).mean
    rejected = source.score([r["prompt"] for r in written], [r["rejected"] for r in written]).mean
    assert metrics["pairs"] == 6 and "subsets" in metrics
    assert metrics["accuracy"] == pytest.approx(float(np.mean((chosen > rejected) + 0.5 * (chosen == rejected))))
    assert metrics["mean_margin"] == pytest.approx(float(np.mean(chosen - rejected)), abs=1e-6)


def test_best_of_n_with_ensemble_objectives(tmp_path):
    pools = write_rows(tmp_path / "pools.jsonl", [{"prompt": "q", "responses": ["a b c", "abcdefgh", "ab cd"], "gold": [0, 1, 0]}])
    config = tmp_path / "ens.yaml"
    config.write_text(yaml.safe_dump({"kind": "ensemble", "members": [
        {"name": "words", "source": {"kind": "rule", "builtin": "length"}},
        {"name": "chars", "source": {"kind": "rule", "builtin": "length", "unit": "characters"}},
    ]}))
    # words 3, 1, 2; chars 5, 8, 5 → mean 4, 4.5, 3.5; min 3, 1, 2; uwo:1 = mean − variance = 3, −7.75, 1.25
    out = tmp_path / "bon"
    cli("bon", "--reward", config, "--pools", pools, "--output-dir", out, "--objective", "mean", "--objective", "min", "--objective", "uwo:1")
    record = json.loads((out / "results.jsonl").read_text())
    assert {name: o["best"] for name, o in record["objectives"].items()} == {"mean": "1", "min": "0", "uwo:1": "0"}
    assert record["reward_parts"] == {"words": [3.0, 1.0, 2.0], "chars": [5.0, 8.0, 5.0]}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["curves"]["mean"]["gold"][-1] == 1.0 and summary["curves"]["min"]["gold"][-1] == 0.0
    single = tmp_path / "single.yaml"
    single.write_text(yaml.safe_dump({"kind": "rule", "builtin": "length"}))
    bad = cli("bon", "--reward", single, "--pools", pools, "--output-dir", out, "--objective", "min", check_rc=2)
    assert "needs an ensemble reward source" in bad.stderr


def test_rule_modules_load_from_beside_the_tree_or_an_allow_list(tmp_path):
    """A tree may name a module beside it, or one the caller allows; anything else importable is refused,
    and a file beside the tree never loses to an already imported module of the same name."""
    (tmp_path / "myrules.py").write_text("def shout(prompt, response):\n    return float(response.count('!'))\n")
    (tmp_path / "json.py").write_text("def loads(prompt, response):\n    return 1.0\n")
    assert build_source({"kind": "rule", "function": "myrules:shout"}, tmp_path).score(["p", "p"], ["hi!!", "hi"]).mean.tolist() == [2.0, 0.0]
    with pytest.raises(UserError, match=r"source: rule 'shutil:copyfile': module 'shutil' is neither a file beside the tree nor allowed; allow it with --allow-rule-module shutil"):
        build_source({"kind": "rule", "function": "shutil:copyfile"}, tmp_path)
    with pytest.raises(UserError, match="'json' is already imported from .*, not from .*json.py"):
        build_source({"kind": "rule", "function": "json:loads"}, tmp_path)
    allowed = build_source({"kind": "rule", "function": "os.path:getsize"}, tmp_path, allowed_modules=["os"])
    with pytest.raises(UserError, match=r"source \(rule os.path:getsize\): row 1 raised TypeError"):
        allowed.score(["p"], ["r"])


class Recorded:
    """A source with set rewards, stds and truncation count that records the batch sizes it is given."""

    def __init__(self, mean, std, truncated):
        self.mean, self.std, self.truncated, self.batch_sizes = np.array(mean), None if std is None else np.array(std), truncated, []

    def score(self, prompts, responses, batch_size=16):
        self.batch_sizes.append(batch_size)
        return RewardScores(mean=self.mean, std=self.std, truncated=self.truncated)


def test_mutation_survivors_in_the_hierarchy():
    """Bugs bench/mutation.py showed the suite missed: the hierarchy's defaults, its std in every mode,
    a std only when every source has one, truncation counts, and batch sizes handed down."""
    h, x = Recorded([1.0, -1.0], [0.5, 0.5], 1), Recorded([2.0, 4.0], [1.0, 2.0], 3)
    rows = (["p", "p"], ["a", "b"])
    default = Hierarchical(h, {"x": (x, 0.5)})  # hierarchical, τ = 0, w_h = 1: gate [1, 0]
    scores = default.score(*rows, batch_size=7)
    assert scores.mean.tolist() == [2.0, -1.0] and scores.truncated == 3 and h.batch_sizes == [7] and x.batch_sizes == [7]
    np.testing.assert_allclose(scores.std, np.sqrt([0.25 + 0.25 * 1.0, 0.25]))  # w_h²σ_h² + gate·w²σ_x²
    weighted = Hierarchical(h, {"x": (x, 0.5)}, holistic_weight=2.0).score(*rows)
    assert weighted.mean.tolist() == [3.0, -2.0]
    np.testing.assert_allclose(weighted.std, np.sqrt([4 * 0.25 + 0.25, 4 * 0.25]))
    aspects = Hierarchical(h, {"x": (x, 0.5)}, mode="aspects").score(*rows)
    assert aspects.mean.tolist() == [1.0, 2.0] and aspects.std.tolist() == [0.5, 1.0]  # no holistic term
    alone = Hierarchical(h, {}, mode="holistic").score(*rows)
    assert alone.mean.tolist() == [1.0, -1.0] and alone.std.tolist() == [0.5, 0.5] and alone.truncated == 1
    assert alone.mean.dtype == aspects.mean.dtype == np.float64  # not an object array from a placeholder zero
    assert Hierarchical(Recorded([1.0, -1.0], None, 0), {"x": (x, 0.5)}).score(*rows).std is None  # the holistic source has none
    with pytest.raises(UserError, match="needs at least one aspect"):
        Hierarchical(h, {}, mode="aspects")
    assert combine_hierarchy(np.array([-0.5, 0.5]), np.array([[1.0, 1.0]]), "hierarchical", aspect_weights=[1.0])[1].tolist() == [0.0, 1.0]  # τ = 0
    half = Recorded([0.5, -1.0], None, 0)  # τ's default, 0, opens the gate at z_h = 0.5 (τ = 1 would not)
    assert Hierarchical(half, {"x": (x, 0.5)}).score(*rows).mean.tolist() == [1.5, -1.0]
    assert half.batch_sizes == [16] and x.batch_sizes[-1] == 16  # score's default batch size, handed down


def test_mutation_survivors_in_the_ensemble():
    """Bugs bench/mutation.py showed the suite missed in ensembles: the default rule, λ and batch size;
    the members' own stds in the combined std; λ and the batch size handed down; the largest truncation
    count; the weighted rule's checks; k = 0 and the message of the rule grammar."""
    from rewardstack.sources.combine import parse_ensemble_rule

    a, b = Recorded([1.0, 3.0], [0.5, 1.0], 2), Recorded([3.0, 3.0], [1.5, 0.0], 5)
    rows = (["p", "p"], ["x", "y"])
    plain = Ensemble({"a": a, "b": b}).score(*rows)  # mean, batch size 16
    assert plain.mean.tolist() == [2.0, 3.0] and plain.truncated == 5 and a.batch_sizes == b.batch_sizes == [16]
    np.testing.assert_allclose(plain.std, np.sqrt([1.0 + 1.25, 0.0 + 0.5]))  # spread + mean of the members' σ²
    uwo = Ensemble({"a": a, "b": b}, "uwo:0.5").score(*rows, batch_size=7)
    assert uwo.mean.tolist() == [1.5, 3.0] and a.batch_sizes[-1] == b.batch_sizes[-1] == 7  # m̄ − λ·spread
    assert combine_ensemble(np.array([[1.0, 3.0], [3.0, 3.0]]), None, "uwo").mean.tolist() == [2.0, 3.0]  # λ = 0
    assert combine_ensemble(np.array([[1, 3], [2, 0]]), None, "min").mean.dtype == np.float64  # int rewards
    for weights in (None, [1.0]):
        with pytest.raises(UserError, match=r"weighted needs `weights`, one per member \(2\)"):
            Ensemble({"a": a, "b": b}, "weighted", weights)
    assert parse_ensemble_rule("uwo:0") == ("uwo", 0.0)
    with pytest.raises(UserError, match=r"^ensemble combine 'median': use mean, min, uwo:λ \(mean − λ·variance across members, λ ≥ 0\) or weighted$"):
        parse_ensemble_rule("median")
    Normalized(a, 1.0, 2.0).score(*rows)
    assert a.batch_sizes[-1] == 16


def test_spec_grammar_edges_and_normalized_pass_through():
    """parse_spec: spaces around a spec, NAME with a stray colon, K missing, negative, infinite or NaN;
    Normalized: (r − μ)/σ and std/σ, with the inner source's parts, truncation and batch size kept."""
    from rewardstack.sources.combine import parse_spec

    assert parse_spec(" uwo:0.25 ", ("mean",), ("uwo",), "rule", "usage") == ("uwo", 0.25)
    assert parse_spec("mean", ("mean",), ("uwo",), "rule", "usage") == ("mean", 0.0)
    for bad in ("mean:", "mean:1", "uwo:", "uwo:-1", "uwo:inf", "uwo:nan", "max"):
        with pytest.raises(UserError, match=rf"^rule '{re.escape(bad)}': "):
            parse_spec(bad, ("mean",), ("uwo",), "rule", "usage")

    class Inner:
        batch_sizes = []

        def score(self, prompts, responses, batch_size=16):
            self.batch_sizes.append(batch_size)
            return RewardScores(mean=np.array([3.0, 5.0]), std=np.array([2.0, 4.0]), parts={"a": np.array([1.0, 2.0])}, truncated=2)

    inner = Inner()
    scores = Normalized(inner, 1.0, 2.0).score(["p", "p"], ["x", "y"], batch_size=5)
    assert scores.mean.tolist() == [1.0, 2.0] and scores.std.tolist() == [1.0, 2.0]
    assert scores.parts["a"].tolist() == [1.0, 2.0] and scores.truncated == 2 and inner.batch_sizes == [5]
    for mean, std in ((0.0, 0.0), (0.0, -1.0), (math.inf, 1.0), (0.0, math.nan)):
        with pytest.raises(UserError, match="normalize"):
            Normalized(inner, mean, std)
