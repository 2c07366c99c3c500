"""Contextual bandits (LASeR): algorithms, normaliser, state, the bandit source and best-of-n with feedback."""

import json

import numpy as np
import torch
import pytest
import yaml

from rewardstack.bon import BonConfig, best_of_n
from rewardstack.laser.bandits import EpsilonGreedy, Exp3, LinearThompson, LinUCB, PercentileNormalizer, make_bandit
from rewardstack.laser.context import ContextEncoder
from rewardstack.errors import UserError
from rewardstack.sources import RewardScores, load_source
from rewardstack.laser.selector import BanditSelector

from conftest import cli, write_rows


def linear_problem(seed=0, dim=6, arms=3):
    """Arm k's expected reward at context x is θ_k·x (contexts: unit vectors plus an intercept)."""
    rng = np.random.default_rng(seed)
    theta = rng.normal(size=(arms, dim))

    def context():
        x = rng.normal(size=dim - 1)
        return np.append(x / np.linalg.norm(x), 1.0)

    return theta, context, rng


def run(bandit, theta, context, rng, rounds):
    regret, right = [], []
    for _ in range(rounds):
        x = context()
        means = theta @ x
        arm = bandit.select(x)
        bandit.update(x, arm, means[arm] + rng.normal(scale=0.1))
        regret.append(means.max() - means[arm])
        right.append(arm == int(np.argmax(means)))
    return np.array(regret), np.array(right)


def test_linucb_learns_the_best_arm_per_context():
    theta, context, rng = linear_problem()
    regret, right = run(LinUCB(3, 6, alpha=0.5), theta, context, rng, 1500)
    random_regret = np.mean([np.max(theta @ x) - np.mean(theta @ x) for x in (context() for _ in range(2000))])
    assert regret[-300:].mean() < 0.1 * random_regret
    assert right[-300:].mean() > 0.9
    assert regret[:300].mean() > 2 * regret[-300:].mean()  # regret per round falls: it learns


def test_thompson_exp3_and_epsilon_greedy_find_a_clearly_best_arm():
    theta, context, rng = linear_problem(seed=1)
    _, right = run(LinearThompson(3, 6, scale=0.2), theta, context, rng, 1500)
    assert right[-300:].mean() > 0.85
    for bandit in (Exp3(3, gamma=0.1, seed=0), EpsilonGreedy(3, epsilon=0.1, seed=0)):  # context-free: arm 2 pays 0.8, others 0.2
        for _ in range(1500):
            arm = bandit.select(None)
            bandit.update(None, arm, 0.8 if arm == 2 else 0.2)
        assert bandit.counts[2] > 0.75 * 1500


def test_linucb_breaks_ties_between_fresh_arms_with_its_seed():
    """Fresh arms have equal bounds: the choice is drawn uniformly with the bandit's seed, not always arm 0;
    once the bounds differ, the largest wins without a draw."""
    x = np.array([1.0, 0.5])
    chosen = [LinUCB(3, 2, seed=s).select(x) for s in range(30)]
    assert chosen == [int(np.random.default_rng(s).choice(np.arange(3))) for s in range(30)] and set(chosen) == {0, 1, 2}
    bandit = LinUCB(3, 2, seed=0)
    bandit.update(x, 2, 1.0)  # arm 2: θ·x = xᵀA⁻¹x = |x|²/(1 + |x|²) = 5/9, width √(5/9); fresh arms: width |x| = √1.25
    assert bandit.upper_bounds(x) == pytest.approx([1.25**0.5, 1.25**0.5, 5 / 9 + (5 / 9) ** 0.5], abs=1e-12)
    assert {bandit.select(x) for _ in range(10)} == {2}


def test_sherman_morrison_equals_direct_inversion():
    rng = np.random.default_rng(0)
    bandit = LinUCB(2, 4, alpha=1.0, ridge=2.0)
    xs = rng.normal(size=(30, 4))
    for i, x in enumerate(xs):
        bandit.update(x, i % 2, float(i))
    for arm in (0, 1):
        rows = xs[arm::2]
        A = 2.0 * np.eye(4) + rows.T @ rows
        b = sum(float(i) * xs[i] for i in range(arm, 30, 2))
        assert bandit.A_inv[arm] == pytest.approx(np.linalg.inv(A), abs=1e-10)
        assert bandit.theta()[arm] == pytest.approx(np.linalg.solve(A, b), abs=1e-9)
    x = xs[0]
    bound = bandit.theta()[1] @ x + np.sqrt(x @ np.linalg.inv(2.0 * np.eye(4) + xs[1::2].T @ xs[1::2]) @ x)
    assert bandit.upper_bounds(x)[1] == pytest.approx(bound)


def test_percentile_normalizer_by_hand():
    normalize = PercentileNormalizer()
    assert normalize(3.0) == 0.5  # one value: q20 = q80
    # history [3, 5]: q20 = 3.4, q80 = 4.6 → (5 − 3.4)/1.2 clipped to 1
    assert normalize(5.0) == 1.0
    # history [3, 5, 4]: q20 = 3.4, q80 = 4.6 → (4 − 3.4)/1.2 = 0.5
    assert normalize(4.0) == pytest.approx(0.5)
    assert normalize(-10.0) == 0.0


def test_make_bandit_errors():
    with pytest.raises(UserError, match="one of linucb"):
        make_bandit("ucb1", 2, 3)
    with pytest.raises(UserError, match="unknown parameter"):
        make_bandit("linucb", 2, 3, gamma=0.1)


class Table:
    """A source with a reward per response text."""

    def __init__(self, table):
        self.table, self.calls = table, 0

    def score(self, prompts, responses, batch_size=16):
        self.calls += len(responses)
        return RewardScores(mean=np.array([self.table[r] for r in responses], dtype=float))


class Lookup:
    """Contexts by prompt text: `math…` prompts → e1, others → e2 (plus the intercept)."""

    dim = 3

    def encode(self, prompts):
        return np.array([[1.0, 0.0, 1.0] if str(p).startswith("math") else [0.0, 1.0, 1.0] for p in prompts])


def test_bandit_source_scores_each_prompt_with_one_member_and_state_round_trips(tmp_path):
    a, b = Table({"x": 1.0, "y": 2.0}), Table({"x": 10.0, "y": 20.0})
    selector = BanditSelector({"a": a, "b": b}, Lookup(), "linucb", alpha=0.0)
    context = Lookup().encode(["math 1"])[0]
    for _ in range(5):  # b is the right choice for math prompts, a for the others
        selector.feedback(context, 1, 1.0, "math 1")
        selector.feedback(context, 0, 0.0, "math 1")
        selector.feedback(Lookup().encode(["chat"])[0], 0, 1.0, "chat")
        selector.feedback(Lookup().encode(["chat"])[0], 1, 0.0, "chat")
    scores = selector.score(["math 1", "chat", "math 1"], ["x", "y", "y"])
    assert scores.mean.tolist() == [10.0, 2.0, 20.0] and scores.arm.tolist() == [1, 0, 1] and scores.parts == {}
    assert a.calls == 1 and b.calls == 2  # only the chosen member scores a row
    path = selector.save_state(tmp_path / "state.safetensors")
    again = BanditSelector({"a": a, "b": b}, Lookup(), "linucb", state_path=path, alpha=0.0)
    assert again.bandit.A_inv == pytest.approx(selector.bandit.A_inv) and again.arm_counts() == {"a": 10, "b": 10}
    assert again.normalizer.history.tolist() == selector.normalizer.history.tolist()
    assert selector.log[0]["context_id"] == selector.log[1]["context_id"] != selector.log[2]["context_id"]
    with pytest.raises(UserError, match="not thompson"):
        BanditSelector({"a": a, "b": b}, Lookup(), "thompson", state_path=path)
    sampler = BanditSelector({"a": a, "b": b}, Lookup(), "thompson")  # randomised choices go on as if never stopped
    sampler.select(["math 1"] * 3)
    sampler.save_state(tmp_path / "thompson.safetensors")
    resumed = BanditSelector({"a": a, "b": b}, Lookup(), "thompson", state_path=tmp_path / "thompson.safetensors")
    assert resumed.bandit.rng.random() == sampler.bandit.rng.random()
    batch = BanditSelector({"a": a, "b": b}, Lookup(), "linucb", per="batch")
    assert len(set(batch.select(["math 1", "chat"])[1])) == 1


def test_policy_context_features():
    encoder = ContextEncoder("policy", "tiny-random", dim=8)
    features = encoder.encode(["What is 2 + 2?", "Write a poem.", "What is 2 + 2?"])
    assert features.shape == (3, 9) and features[:, -1].tolist() == [1.0, 1.0, 1.0]
    assert np.linalg.norm(features[:, :-1], axis=1) == pytest.approx([1.0] * 3)
    assert features[0].tolist() == features[2].tolist() and features[0].tolist() != features[1].tolist()
    words = ContextEncoder("words", dim=4).encode(["math math", "Math, MATH!"])
    assert words[0].tolist() == words[1].tolist() and sorted(np.abs(words[0][:-1]).tolist()) == [0.0, 0.0, 0.0, 1.0]


def test_bon_with_a_bandit_learns_from_gold_and_reports_baselines(tmp_path):
    """Two rule members: `length` is right on math prompts (gold = longest), `short` on the others."""
    (tmp_path / "rules.py").write_text(
        "def length(prompt, response):\n    return float(len(response))\n"
        "def short(prompt, response):\n    return -float(len(response))\n")
    pools = []
    for i in range(40):
        responses = ["a", "bb", "ccc"]
        math = i % 2 == 0
        pools.append({"id": str(i), "prompt": f"{'math' if math else 'chat'} question {i}", "responses": responses,
                      "gold": [0.0, 0.5, 1.0] if math else [1.0, 0.5, 0.0], "group": "math" if math else "chat"})
    write_rows(tmp_path / "pools.jsonl", pools)
    tree = {"kind": "bandit", "algorithm": "linucb", "params": {"alpha": 0.2}, "context": {"kind": "words", "dim": 16},
            "members": [{"name": "long", "source": {"kind": "rule", "function": "rules:length"}},
                        {"name": "short", "source": {"kind": "rule", "function": "rules:short"}}]}
    (tmp_path / "bandit.yaml").write_text(yaml.safe_dump(tree))
    out = tmp_path / "out"
    summary = best_of_n(load_source(tmp_path / "bandit.yaml"), BonConfig(feedback="gold"), pools=tmp_path / "pools.jsonl", output_dir=out)
    assert json.loads((out / "summary.json").read_text()) == summary
    curves = summary["curves"]
    assert set(curves) == {"bandit", "random", "ensemble", "only:long", "only:short"}
    # each member alone: right on half the pools. Best-of-3 by length on a math pool has gold 1, on a chat pool 0.
    assert curves["only:long"]["gold"][2] == pytest.approx(0.5) and curves["random"]["gold"][2] == pytest.approx(0.5)
    # the mean of length and −length is 0 for every response: ties, so best-of-3 is a random response (gold ½)
    assert curves["ensemble"]["gold"][2] == pytest.approx(0.5)
    assert curves["bandit"]["gold"][2] > 0.7  # it learns which member suits which kind of prompt
    counts = summary["arm_counts_by_group"]
    assert counts["math"]["long"] > counts["math"]["short"] and counts["chat"]["short"] > counts["chat"]["long"]
    assert sum(summary["arm_counts"].values()) == 40
    assert (out / "bandit_state.safetensors").exists() and len((out / "bandit_log.jsonl").read_text().splitlines()) == 40
    assert load_source(tmp_path / "bandit.yaml").arm_counts() == {"long": 0, "short": 0}  # no state path: starts fresh
    # the CLI gives the same run; a tree with a state path keeps the bandit there, and loading the tree again resumes it
    (tmp_path / "kept.yaml").write_text(yaml.safe_dump({**tree, "state": "kept/state.safetensors"}))
    result = cli("bon", "--reward", tmp_path / "kept.yaml", "--pools", tmp_path / "pools.jsonl", "--feedback", "gold", "--output-dir", tmp_path / "cli")
    assert "arm counts by group" in result.stdout and not (tmp_path / "cli" / "bandit_state.safetensors").exists()
    assert json.loads((tmp_path / "cli" / "summary.json").read_text())["arm_counts"] == summary["arm_counts"]
    assert load_source(tmp_path / "kept.yaml").arm_counts() == summary["arm_counts"]
    assert len((tmp_path / "kept" / "bandit_log.jsonl").read_text().splitlines()) == 40
    error = cli("bon", "--reward", tmp_path / "bandit.yaml", "--pools", tmp_path / "pools.jsonl", "--feedback", "user", "--output-dir", out, check_rc=2)
    assert "got 'user' (option --feedback)" in error.stderr


def test_optimize_runs_an_iteration_changes_the_policy_and_resumes(tmp_path):
    from safetensors.torch import load_file

    (tmp_path / "rules.py").write_text(  # random-byte samples of one length: rank them by their code points
        "def length(prompt, response):\n    return float(sum(map(ord, response)) % 97)\n"
        "def short(prompt, response):\n    return -float(sum(map(ord, response)) % 97)\n")
    tree = {"kind": "bandit", "algorithm": "linucb", "context": {"kind": "words", "dim": 8},
            "members": [{"name": "long", "source": {"kind": "rule", "function": "rules:length"}},
                        {"name": "short", "source": {"kind": "rule", "function": "rules:short"}}]}
    (tmp_path / "bandit.yaml").write_text(yaml.safe_dump(tree))
    write_rows(tmp_path / "prompts.jsonl", [{"prompt": f"What is {i} + 1?", "answer": str(i + 1), "group": "ab"[i % 2]} for i in range(4)])
    out = tmp_path / "run"
    common = ["--reward", tmp_path / "bandit.yaml", "--prompts", tmp_path / "prompts.jsonl", "--dev", tmp_path / "prompts.jsonl",
              "--policy", "tiny-random", "--batch-prompts", "2", "--n", "3", "--max-new-tokens", "6", "--learning-rate", "1e-2", "--output-dir", out]
    result = cli("optimize", *common, "--iterations", "1")
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [h["iteration"] for h in history] == [0, 1] and history[1]["batches"] == 2
    # per instance (the default): every prompt gets its own source, each prompt with pairs gives feedback
    # (one pair per prompt at most, so prompts with feedback = pairs)
    assert history[1]["pairs"] > 0 and sum(history[1]["arms"].values()) == 4 and sum(history[1]["bandit_counts"].values()) == history[1]["pairs"]
    assert {g: sum(c.values()) for g, c in history[1]["arms_by_group"].items()} == {"a": 2, "b": 2}
    pairs = [json.loads(line) for line in (out / "iter-1" / "pairs.jsonl").read_text().splitlines()]
    assert len(pairs) == history[1]["pairs"] and all(p["chosen"] != p["rejected"] and p["chosen_correct"] is False for p in pairs)
    assert sum(c["neither"] for c in history[1]["gold_pairs"].values()) == len(pairs)  # random bytes are never right
    assert "iteration 1: prompts.jsonl=" in result.stdout
    before, after = (load_file(out / f"iter-{i}" / "adapter" / "adapter_model.safetensors") for i in (0, 1))
    assert any(not np.allclose(before[k].numpy(), after[k].numpy()) for k in before)  # the update moved the LoRA weights
    cli("optimize", *common, "--iterations", "2", "--resume")
    assert [json.loads(line)["iteration"] for line in (out / "history.jsonl").read_text().splitlines()] == [0, 1, 2]
    cli("optimize", *common[:-1], tmp_path / "straight", "--iterations", "2")  # resuming gives what an uninterrupted run gives
    resumed, straight = (load_file(d / "iter-2" / "adapter" / "adapter_model.safetensors") for d in (out, tmp_path / "straight"))
    assert all(torch.equal(resumed[k], straight[k]) for k in straight)
    assert "--resume" in cli("optimize", *common, "--iterations", "2", check_rc=2).stderr
    assert "single:NAME" in cli("optimize", *common, "--selection", "single:nope", "--output-dir", tmp_path / "x", check_rc=2).stderr
    (tmp_path / "bandit.yaml").write_text(yaml.safe_dump(tree | {"per": "batch"}))  # one choice and one feedback per batch
    cli("optimize", *common[:-1], tmp_path / "per-batch", "--iterations", "1")
    batch_run = json.loads((tmp_path / "per-batch" / "history.jsonl").read_text().splitlines()[1])
    assert sum(batch_run["bandit_counts"].values()) == 2 - batch_run["skipped_batches"] and sum(batch_run["arms"].values()) == 4


def test_optimize_gold_feedback_is_the_answers_verdict_on_each_prompts_pairs(tmp_path, monkeypatch):
    """--feedback gold: the bandit learns from the mean of correct(chosen) − correct(rejected) over a
    prompt's pairs (or the batch's, per batch); loss feedback is −L of the same pairs."""
    from rewardstack.laser.optimize import OptimizeConfig, Optimizer, optimize
    from rewardstack.sampling import Samples

    def fixed_samples(self, prompts, sampling):  # per prompt "What is i + 1?": the right answer, a wrong one, no answer
        if sampling.n == 1:  # greedy dev answers
            return Samples([["0"] for _ in prompts], 0)
        values = [int(p[-1]["content"].split()[2]) + 1 for p in prompts]
        return Samples([[f"{v}", f"{v + 4} maybe", "no idea at all"] for v in values], 0)

    monkeypatch.setattr(Optimizer, "sample", fixed_samples)
    members = [{"name": "long", "source": {"kind": "rule", "builtin": "length", "unit": "characters"}},
               {"name": "short", "source": {"kind": "rule", "function": "feedback_rules:short"}}]  # a module name no other test imports
    (tmp_path / "feedback_rules.py").write_text("def short(prompt, response):\n    return -float(len(response))\n")
    prompts = [{"prompt": f"What is {i} + 1?", "answer": str(i + 1)} for i in range(6)]
    # long ranks: no answer > wrong > right: pairs (none, wrong) → 0 and (none, right) → −1, mean −0.5;
    # short ranks: right > wrong > none: pairs (right, wrong) → +1 and (right, none) → +1, mean 1.
    expected = {"long": -0.5, "short": 1.0}
    for per in ("instance", "batch"):
        tree = {"kind": "bandit", "algorithm": "linucb", "per": per, "context": {"kind": "words", "dim": 8}, "members": members}
        (tmp_path / "bandit.yaml").write_text(yaml.safe_dump(tree))
        logs = {}
        for feedback in ("gold", "loss"):
            selector = load_source(tmp_path / "bandit.yaml")
            config = OptimizeConfig(policy="tiny-random", iterations=1, batch_prompts=2, n=3, pairs_per_prompt=2, feedback=feedback)
            out = tmp_path / f"{per}-{feedback}"
            history = optimize(selector, config, prompts, out, dev={"dev": [{"prompt": "What is 0 + 0?", "answer": "0"}, {"prompt": "What is 1 + 1?", "answer": "2"}]})
            assert [(h["dev_correct"], h["accuracy"]) for h in history] == [({"dev": [1, 0]}, {"dev": 0.5})] * 2  # greedy answers "0"
            logs[feedback] = [json.loads(line) for line in (out / "iter-1" / "bandit_log.jsonl").read_text().splitlines()]
        pairs = [json.loads(line) for line in (out / "iter-1" / "pairs.jsonl").read_text().splitlines()]
        assert len(logs["gold"]) == (6 if per == "instance" else 3) == len(logs["loss"])
        for entry in logs["gold"]:  # a batch's prompts share one member, so its mean is the member's too
            assert entry["feedback"] == expected[entry["arm"]]
        losses = [p["loss"] for p in pairs]
        per_feedback = [np.mean(losses[k : k + 2]) for k in range(0, len(losses), 2)] if per == "instance" else \
            [np.mean(losses[k : k + 4]) for k in range(0, len(losses), 4)]
        assert [e["feedback"] for e in logs["loss"]] == pytest.approx([-v for v in per_feedback], rel=1e-6)
    assert "needs an `answer` on every training prompt; 1 have none (first: row 3)" in str(pytest.raises(
        UserError, optimize, selector, OptimizeConfig(policy="tiny-random", feedback="gold"), prompts[:2] + [{"prompt": "Hi"}], tmp_path / "x").value)
    assert "feedback must be loss or gold" in str(pytest.raises(UserError, OptimizeConfig, feedback="user").value)


def test_exp3_update_is_the_importance_weighted_one_by_hand():
    """w_a ← w_a · exp(γ r / (K p_a)) with p = (1 − γ) w/Σw + γ/K, two updates of arm 1 checked exactly."""
    import math

    bandit = Exp3(3, gamma=0.3)
    bandit.update(None, 1, 0.6)  # p_1 = 1/3: log w_1 = 0.3 · 0.6 / (3 · 1/3) = 0.18
    assert bandit.log_w.tolist() == pytest.approx([0.0, 0.18, 0.0], abs=1e-15)
    p1 = 0.7 * math.exp(0.18) / (2 + math.exp(0.18)) + 0.1
    assert bandit.probabilities()[1] == pytest.approx(p1, rel=1e-12)
    bandit.update(None, 1, 1.0)
    assert bandit.log_w[1] == pytest.approx(0.18 + 0.3 / (3 * p1), rel=1e-12)
    bandit.update(None, 2, 0.0)  # no reward: no change, but counted
    assert bandit.log_w[2] == 0.0 and bandit.counts.tolist() == [0, 2, 1]


def test_thompson_samples_from_the_posterior_with_covariance_scale_squared():
    """θ̃_k ~ N(A_k⁻¹ b_k, v² A_k⁻¹): the mean and covariance handed to the sampler, checked exactly."""
    bandit = LinearThompson(2, 2, scale=0.5, ridge=2.0, seed=0)
    x = np.array([1.0, -0.5])
    bandit.update(x, 0, 0.8)
    calls = []

    class Recorder:  # the bandit's generator, noting what it is asked to sample from
        def __init__(self, rng):
            self.rng = rng

        def multivariate_normal(self, mean, cov, **kwargs):
            calls.append((mean.copy(), cov.copy()))
            return self.rng.multivariate_normal(mean, cov, **kwargs)

    bandit.rng = Recorder(bandit.rng)
    bandit.select(x)
    A0 = 2.0 * np.eye(2) + np.outer(x, x)
    np.testing.assert_allclose(calls[0][0], np.linalg.solve(A0, 0.8 * x), atol=1e-12)
    np.testing.assert_allclose(calls[0][1], 0.25 * np.linalg.inv(A0), atol=1e-12)
    np.testing.assert_allclose(calls[1][1], 0.25 * np.eye(2) / 2.0, atol=1e-12)  # the untouched arm: v² / λ · I


def test_mutation_survivors_in_the_bandits():
    """Bugs bench/mutation.py showed the suite missed: defaults, seeded reproducibility, Thompson's
    Cholesky draws, Exp3's overflow guard, ε-greedy's untried-first rule, means and counts."""
    for name in ("thompson", "exp3", "epsilon_greedy"):
        runs = []
        for seed in (5, 5, 6):
            bandit, rng = make_bandit(name, 3, 2, seed=seed), np.random.default_rng(0)
            choices = []
            for _ in range(40):
                x = rng.normal(size=2)
                choices.append(bandit.select(x))
                bandit.update(x, choices[-1], float(rng.random()))
            runs.append(choices)
        assert runs[0] == runs[1] and runs[0] != runs[2], name
    # every default, on the classes themselves and through make_bandit: α 1, v 0.5, γ 0.1, ε 0.1, ridge 1, seed 0
    seed_0 = np.random.default_rng(0).bit_generator.state
    for made in (False, True):
        build = (lambda name, cls, dim: make_bandit(name, 2, dim)) if made else (lambda name, cls, dim: cls(2, dim))
        linucb, thompson = build("linucb", LinUCB, 2), build("thompson", LinearThompson, 2)
        exp3, greedy = build("exp3", Exp3, 0), build("epsilon_greedy", EpsilonGreedy, 0)
        assert (linucb.alpha, thompson.scale, exp3.gamma, greedy.epsilon) == (1.0, 0.5, 0.1, 0.1)
        for bandit in (linucb, thompson):
            np.testing.assert_array_equal(bandit.A_inv, np.stack([np.eye(2)] * 2))  # ridge 1
        assert all(b.rng.bit_generator.state == seed_0 for b in (linucb, thompson, exp3, greedy))

    thompson, x = LinearThompson(2, 2, seed=3), np.array([1.0, 2.0])
    thompson.update(x, 1, 1.0)
    rng, theta = np.random.default_rng(3), thompson.theta()
    drawn = [rng.multivariate_normal(theta[k], 0.25 * thompson.A_inv[k], method="cholesky") for k in range(2)]
    assert thompson.select(x) == int(np.argmax(np.array(drawn) @ x))

    exp3 = Exp3(3, gamma=0.3)
    exp3.log_w = np.array([800.0, 0.0, 0.0])  # exp(800) overflows unless the largest weight is taken out first
    np.testing.assert_allclose(exp3.probabilities(), [0.7 + 0.1, 0.1, 0.1], rtol=1e-12)

    greedy = EpsilonGreedy(3, epsilon=0.0)
    greedy.update(None, 0, 1.0)
    assert {EpsilonGreedy(3, epsilon=0.0, seed=s).select() for s in range(20)} == {0, 1, 2}  # all untried: ties drawn at random
    assert greedy.select() == 2  # arms 1 and 2 are untried: they come first whatever arm 0 paid (seed 0 draws 2 of [1, 2])
    greedy.update(None, 1, 0.7)
    greedy.update(None, 1, 0.7)
    greedy.update(None, 2, 0.1)
    assert greedy.select() == 0 and greedy.counts.tolist() == [1, 2, 1]  # means 1.0, 0.7, 0.1


def test_every_algorithm_state_round_trips_as_a_copy():
    for name in ("linucb", "thompson", "exp3", "epsilon_greedy"):
        trained, rng = make_bandit(name, 3, 2, seed=1), np.random.default_rng(2)
        for _ in range(6):
            x = rng.normal(size=2)
            trained.update(x, trained.select(x), float(rng.random()))
        saved = {k: v.copy() for k, v in trained.state().items()}
        restored = make_bandit(name, 3, 2, seed=1)
        restored.load_state(trained.state())
        assert set(restored.state()) == set(saved) and len(saved) >= 2, name
        for key, value in saved.items():
            np.testing.assert_array_equal(restored.state()[key], value, err_msg=f"{name}.{key}")
        trained.update(np.ones(2), 0, 1.0)  # the restored bandit holds copies, not views of the trained one's arrays
        for key, value in saved.items():
            np.testing.assert_array_equal(restored.state()[key], value, err_msg=f"{name}.{key} after the original moved on")
