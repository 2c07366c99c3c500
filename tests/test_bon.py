import itertools
import json
import math
from dataclasses import replace

import numpy as np
import torch
import pytest

from rewardstack.bon import Objective, best_of_n_kl, expected_best_of_n, run_best_of_n
from rewardstack.data.pools import load_pools
from rewardstack.errors import UserError
from rewardstack.gold import answer_is_correct, extract_answer, normalize_answer
from rewardstack.model import ModelConfig, RewardModel
from rewardstack.sampling import SamplingConfig
from rewardstack.sources import RewardScores

from conftest import cli, write_rows


def brute_force(scores, values, n):
    """Mean over all n-subsets of the value of the best-scoring member, ties split evenly."""
    totals = []
    for subset in itertools.combinations(range(len(scores)), n):
        top = max(scores[i] for i in subset)
        winners = [values[i] for i in subset if scores[i] == top]
        totals.append(sum(winners) / len(winners))
    return sum(totals) / len(totals)


def test_expected_best_of_n_equals_enumerating_every_subset_with_ties():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 4, size=8).astype(float)  # many ties
    values = rng.normal(size=8)
    got = expected_best_of_n(scores, values, range(1, 9))
    np.testing.assert_allclose(got, [brute_force(scores, values, n) for n in range(1, 9)], rtol=1e-12)
    assert got[0] == pytest.approx(values.mean())  # n = 1 is a random sample
    # [1, 2, 3] with values [10, 20, 30], n = 2: subsets {1,2}, {1,3}, {2,3} → (20 + 30 + 30) / 3
    assert expected_best_of_n([1, 2, 3], [10, 20, 30], [2])[0] == pytest.approx(80 / 3)
    with pytest.raises(ValueError, match="outside"):
        expected_best_of_n([1, 2], [1, 2], [3])
    # values given as booleans (correct or not) count as 0/1, also summed within a tie
    assert expected_best_of_n([1, 1, 0], [True, True, False], [1, 2, 3]).tolist() == pytest.approx([2 / 3, 1.0, 1.0])
    assert expected_best_of_n([5.0], [0.3], [1]).tolist() == [0.3]  # one sample
    with pytest.raises(ValueError, match="as many values as scores"):
        expected_best_of_n([1, 2], [1], [1])


def test_best_of_n_kl():
    assert best_of_n_kl(1) == 0.0
    assert best_of_n_kl(4) == pytest.approx(math.log(4) - 0.75)


def test_objectives_parse_score_and_refuse_bad_specs():
    mean, std = np.array([1.0, 2.0]), np.array([0.5, 2.0])
    assert Objective.parse("mean").score(RewardScores(mean)).tolist() == [1.0, 2.0]
    assert Objective.parse("lcb:1.5").score(RewardScores(mean, std)).tolist() == [0.25, -1.0]
    assert Objective.parse("var:2").score(RewardScores(mean, std)).tolist() == [0.5, -6.0]
    # slcb:1 on μ = (1, 2, 4), σ = 1000·(1, 3, 2): sd(μ) = √14/3, σ/mean σ = (0.5, 1.5, 1): μ − (√14/6, √14/2, √14/3)
    pool_mean, pool_std, root = np.array([1.0, 2.0, 4.0]), 1000 * np.array([1.0, 3.0, 2.0]), 14**0.5
    slcb = Objective.parse("slcb:1").score(RewardScores(pool_mean, pool_std))
    np.testing.assert_allclose(slcb, [1 - root / 6, 2 - root / 2, 4 - root / 3], rtol=1e-12)
    np.testing.assert_allclose(Objective.parse("slcb:1").score(RewardScores(pool_mean, pool_std / 1e6)), slcb, rtol=1e-12)  # σ's scale
    np.testing.assert_allclose(Objective.parse("slcb:1").score(RewardScores(3 * pool_mean, pool_std)), 3 * slcb, rtol=1e-12)  # μ's scale
    assert Objective.parse("slcb:2").score(RewardScores(pool_mean, np.zeros(3))).tolist() == [1.0, 2.0, 4.0]  # no std: the mean
    members = {"a": np.array([1.0, 4.0]), "b": np.array([3.0, 0.0])}  # means 2, 2; variances 1, 4
    assert Objective.parse("min").score(RewardScores(mean, parts=members)).tolist() == [1.0, 0.0]
    assert Objective.parse("uwo:0.5").score(RewardScores(mean, parts=members)).tolist() == [1.5, 0.0]
    with pytest.raises(UserError, match="needs an ensemble"):
        Objective.parse("min").score(RewardScores(mean))
    assert Objective.parse("lcb:1.0").name == "lcb:1"
    for bad in ("lcb", "lcb:x", "max", "var:-1", "mean:2", "slcb"):
        with pytest.raises(UserError, match="objective"):
            Objective.parse(bad)
    with pytest.raises(UserError) as error:
        Objective.parse("max")
    assert str(error.value) == ("objective 'max': use mean, lcb:K (mean − K·std), var:K (mean − K·variance), slcb:K (lcb with the std "
                                "rescaled to the pool's reward spread), or for an ensemble min or uwo:K (members' mean − K·their variance), K ≥ 0")
    with pytest.raises(UserError, match="rewardstack laplace"):
        Objective.parse("lcb:1").score(RewardScores(mean))


def test_selection_scores_are_float64_whatever_the_rewards_precision():
    mean, std = np.float32([0.1, 2.7, 1.3]), np.float32([0.1, 0.7, 0.3])  # a model's float32 rewards
    m, s = mean.astype(np.float64), std.astype(np.float64)
    scores = RewardScores(mean, std)
    assert Objective.parse("mean").score(scores).dtype == np.float64
    assert Objective.parse("lcb:0.3").score(scores).tolist() == (m - 0.3 * s).tolist()
    assert Objective.parse("slcb:0.3").score(scores).tolist() == (m - 0.3 * m.std() * s / s.mean()).tolist()


def test_set_gold_from_scores_every_pool_in_float64():
    from rewardstack.bon import set_gold_from

    class Float32Length(LengthReward):
        def score(self, prompts, responses, batch_size=16):
            scores = super().score(prompts, responses, batch_size)
            return RewardScores(scores.mean.astype(np.float32))

    pools = [pool_of("0", "q", ["a", "bbb"], [1.0, 0.0]), pool_of("1", "q", ["cc"])]
    gold = Float32Length()
    set_gold_from(gold, pools)
    set_gold_from(gold, pools, batch_size=3)
    assert [p.gold.tolist() for p in pools] == [[1.0, 3.0], [2.0]] and pools[0].gold.dtype == np.float64
    assert gold.batch_sizes == [16, 3]


@pytest.mark.parametrize(
    "text, answer",
    [
        ("so the result is \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),
        ("nested \\boxed{2^{10}} and later \\boxed{3}", "3"),
        ("first \\boxed{3} then \\boxed{2^{10}}", "2^{10}"),
        ("We get 3 + 4 = 7\n#### 7", "7"),
        ("The total is 1,234 dollars.", "1,234"),
        ("no number here", None),
    ],
)
def test_extract_answer(text, answer):
    assert extract_answer(text) == answer


def test_answer_checking_normalises():
    assert answer_is_correct("\\boxed{420}", "420")
    assert answer_is_correct("#### 1,000", "1000.0")
    assert answer_is_correct("answer: \\boxed{\\dfrac{1}{2}}", "\\frac{1}{2}")
    assert answer_is_correct("\\boxed{2.50}", "2.5")
    assert not answer_is_correct("\\boxed{421}", "420")
    assert not answer_is_correct("I do not know", "420")


@pytest.mark.parametrize("response, answer, correct", [
    ("Yes, because there is no other way.", "True", True),   # a leading yes decides
    ("**No.** It is true that ...", "false", True),
    ("Albany has 75,000 people, so the answer is no.", "False", True),  # else the last yes/no word
    ("The answer is yes", "no", False),
    ("I cannot tell.", "True", False),                       # no yes/no at all
    ("Nobody knows; yesterday it was 4", "True", False),     # whole words only
])
def test_yes_no_answers(response, answer, correct):
    assert answer_is_correct(response, answer) is correct
    assert normalize_answer("\\text{ 5 cm}") == "5cm" and normalize_answer("$3.0$") == "3"


def test_load_pools_reads_every_format(tmp_path):
    rows = [
        {"prompt": "2+2?", "responses": ["4", "5"], "gold": [1, 0]},
        {"prompt": [{"role": "user", "content": "3*3?"}], "responses": ["It is \\boxed{9}", "8"], "answer": "9"},
        {"question": "1+1?", "code": ["\\boxed{2}", "\\boxed{3}"], "score": [True, False], "pred_score": [[0.5], [0.1]]},
        {"question": "5-2?", "ground_truth": "#### 3", "solver_a": {"is_correct": False, "solution": "4"},
         "solver_b": {"is_correct": True, "solution": "3"}},
        {"instruction_id": 7, "instruction": "Say hi", "generator": "g1", "output": "hi", "gold_winrate": 0.9},
        {"instruction_id": 7, "instruction": "Say hi", "generator": "g2", "output": "", "gold_winrate": 0.2},
        {"instruction_id": 7, "instruction": "Say hi", "generator": "g3", "output": "hello", "gold_winrate": 0.4},
    ]
    pools, report = load_pools(write_rows(tmp_path / "pools.jsonl", rows))
    assert [p.gold.tolist() for p in pools] == [[1, 0], [1, 0], [1, 0], [0, 1], [0.9, 0.4]]
    assert pools[2].reference.tolist() == [0.5, 0.1]
    assert pools[3].response_ids == ["solver_a", "solver_b"] and pools[4].response_ids == ["g1", "g3"]
    assert pools[4].key == "7" and report.skipped == {"empty output or no gold_winrate": 1}


def test_bad_pool_rows_name_file_row_and_field(tmp_path):
    path = write_rows(tmp_path / "bad.jsonl", [{"prompt": "p", "responses": ["a"]}, {"prompt": "p", "responses": ["a", "b"], "gold": [1]}])
    with pytest.raises(UserError, match=r"bad.jsonl: row 2: field 'gold': expected a list of 2 numbers"):
        load_pools(path)
    pools, report = load_pools(path, skip_invalid=True)
    assert len(pools) == 1 and report.skipped == {"wrong type": 1}


class LengthReward:
    """A rule source: reward = response length, std = 10 for responses starting with '?'; reports 2 rows
    truncated per call and records the batch size it was given."""

    def __init__(self):
        self.batch_sizes = []

    def score(self, prompts, responses, batch_size=16):
        self.batch_sizes.append(batch_size)
        mean = np.array([float(len(r)) for r in responses])
        return RewardScores(mean=mean, std=np.array([10.0 if r.startswith("?") else 0.0 for r in responses]), truncated=2)


def pool_of(key, prompt, responses, gold=None, group=None):
    from rewardstack.data.pools import Pool

    ids = [f"{key}-{i}" for i in range(len(responses))]
    return Pool(key, ({"role": "user", "content": prompt},), responses, ids, None if gold is None else np.array(gold, dtype=float), group=group)


def test_run_best_of_n_curves_per_objective():
    pool = pool_of("0", "q", ["a", "bbb", "?cccc"], [0.0, 1.0, 0.2])
    result = run_best_of_n(LengthReward(), [pool, pool], [Objective.parse("mean"), Objective.parse("lcb:1")])
    assert result["n"] == [1, 2, 3] and result["truncated"] == 2
    np.testing.assert_allclose(result["kl"], [0.0, math.log(2) - 0.5, math.log(3) - 2 / 3])
    # mean picks by length: the uncertain longest one wins whenever drawn
    np.testing.assert_allclose(result["curves"]["mean"]["gold"], [1.2 / 3, (1.0 + 0.2 + 0.2) / 3, 0.2])
    np.testing.assert_allclose(result["curves"]["mean"]["proxy"], [3.0, 13 / 3, 5.0])  # lengths 1, 3, 5
    # lcb:1 ranks "?cccc" at 5 − 10 = −5, below the rest; its proxy is still the mean reward, 5
    np.testing.assert_allclose(result["curves"]["lcb:1"]["gold"], [1.2 / 3, (1.0 + 0.0 + 1.0) / 3, 1.0])
    np.testing.assert_allclose(result["curves"]["lcb:1"]["proxy"], [3.0, (3 + 1 + 3) / 3, 3.0])
    record = result["pools"][0]
    assert record["objectives"]["lcb:1"]["best"] == "0-1" and record["objectives"]["mean"]["best"] == "0-2"
    assert {k: v for k, v in record.items() if k != "objectives"} == {
        "key": "0", "responses": 3, "reward": [1.0, 3.0, 5.0], "reward_std": [0.0, 0.0, 10.0], "gold": [0.0, 1.0, 0.2]}
    # a pool without gold: proxy curves only, up to the smallest pool's size
    mixed = run_best_of_n(LengthReward(), [pool, pool_of("1", "q", ["dd", "e"])], [Objective.parse("mean")])
    assert mixed["n"] == [1, 2] and list(mixed["curves"]["mean"]) == ["proxy"] and "gold" not in mixed["pools"][1]
    np.testing.assert_allclose(mixed["curves"]["mean"]["proxy"], [(3.0 + 1.5) / 2, (13 / 3 + 2.0) / 2])
    with pytest.raises(UserError, match="no pools"):
        run_best_of_n(LengthReward(), [], [Objective.parse("mean")])
    with pytest.raises(UserError, match=r"needs an ensemble reward source \(kind: ensemble in a YAML tree\)"):
        run_best_of_n(LengthReward(), [pool], [Objective.parse("uwo:1")])
    source = LengthReward()
    run_best_of_n(source, [pool], [Objective.parse("mean")])
    run_best_of_n(source, [pool], [Objective.parse("mean")], batch_size=3)
    assert source.batch_sizes == [16, 3]


def test_member_objectives_rank_by_an_ensembles_members_also_when_normalized():
    from rewardstack.sources.combine import Ensemble, Normalized

    # members: length (1, 3, 5) and 6 − length (5, 3, 1): their mean is 3 for every response, their
    # variance 4, 0, 4, so uwo:1 = 3 − variance and min = (1, 3, 1) both pick "bbb", the gold one
    ensemble = Ensemble({"long": LengthReward(), "short": RuleReward(lambda r: 6.0 - len(r), 0)})
    pool = pool_of("0", "q", ["a", "bbb", "?cccc"], [0.0, 1.0, 0.2])
    for source in (ensemble, Normalized(ensemble, 1.0, 2.0)):
        result = run_best_of_n(source, [pool], [Objective.parse("uwo:1"), Objective.parse("min")])
        assert result["pools"][0]["objectives"]["uwo:1"]["best"] == "0-1" and result["pools"][0]["objectives"]["min"]["best"] == "0-1"
        np.testing.assert_allclose(result["curves"]["min"]["gold"], [1.2 / 3, (1.0 + 0.1 + 1.0) / 3, 1.0])  # a and ?cccc tie


class ScriptedSelector:
    """A stand-in for a bandit: arm 0 for prompts that mention math, else arm 1; it records its feedback."""

    def __init__(self, members):
        self.members, self.names, self.feedbacks = members, list(members), []

    def select(self, prompts):
        text = prompts[0][-1]["content"]
        return np.array([[float(len(text))]]), [0 if "math" in text else 1]

    def feedback(self, context, arm, raw, prompt=None):
        self.feedbacks.append((context.tolist(), arm, raw, prompt[-1]["content"]))

    def arm_counts(self):
        return {name: sum(arm == i for _, arm, _, _ in self.feedbacks) for i, name in enumerate(self.names)}


class RuleReward:
    def __init__(self, rule, truncated):
        self.rule, self.truncated = rule, truncated

    def score(self, prompts, responses, batch_size=16):
        return RewardScores(mean=np.array([self.rule(r) for r in responses], dtype=float), truncated=self.truncated)


def test_bandit_best_of_n_follows_the_chosen_member_and_reports_every_baseline():
    from rewardstack.bon import run_bandit_best_of_n

    # `long` = 10·length, `y` = 1 for the response "yy": z-scored over all 9 responses (length mean 2, sd √(2/3);
    # `y` mean 1/3, sd √2/3) their sum ranks yy (1.41) > zzz (0.52) > x (−1.93). Unscaled, `long` would decide.
    members = {"long": RuleReward(lambda r: 10.0 * len(r), 1), "y": RuleReward(lambda r: float(r == "yy"), 3)}
    pools = [pool_of("0", "math 0", ["x", "yy", "zzz"], [0.0, 0.5, 1.0], "math"),
             pool_of("1", "chat 1", ["x", "yy", "zzz"], [1.0, 0.25, 0.0], "chat"),
             pool_of("2", "chat two", ["yy", "zzz", "x"], [0.5, 0.0, 1.0])]
    selector = ScriptedSelector(members)
    result = run_bandit_best_of_n(selector, pools)
    assert result["arms"] == ["long", "y", "y"] and result["truncated"] == 3
    assert selector.feedbacks == [([6.0], 0, 1.0, "math 0"), ([6.0], 1, 0.25, "chat 1"), ([8.0], 1, 0.5, "chat two")]
    assert [r["best"] for r in result["pools"]] == ["0-2", "1-1", "2-0"] and [r["feedback"] for r in result["pools"]] == [1.0, 0.25, 0.5]
    assert result["arm_counts_by_group"] == {"math": {"long": 1, "y": 0}, "chat": {"long": 0, "y": 1}, "all": {"long": 0, "y": 1}}
    assert result["arm_counts"] == {"long": 1, "y": 2} and result["n"] == [1, 2, 3]
    np.testing.assert_allclose(result["kl"], [0.0, math.log(2) - 0.5, math.log(3) - 2 / 3])
    assert [r["key"] for r in result["pools"]] == ["0", "1", "2"]
    assert result["pools"][2]["rewards"] == {"long": [20.0, 30.0, 10.0], "y": [1.0, 0.0, 0.0]}
    assert result["pools"][2]["group"] is None and result["pools"][2]["gold"] == [0.5, 0.0, 1.0]
    # a group's counts add up; one pool alone; the batch size reaches every member
    twice = run_bandit_best_of_n(ScriptedSelector(members), [pools[1], pools[1]])
    assert twice["arm_counts_by_group"] == {"chat": {"long": 0, "y": 2}}
    counting = LengthReward()
    alone = run_bandit_best_of_n(ScriptedSelector({"long": counting, "y": members["y"]}), [pools[0]], batch_size=5)
    assert alone["arms"] == ["long"] and set(alone["curves"]) == {"bandit", "random", "ensemble", "only:long", "only:y"}
    assert counting.batch_sizes == [5]
    run_bandit_best_of_n(ScriptedSelector({"long": counting, "y": members["y"]}), [pools[0]])
    assert counting.batch_sizes == [5, 16]

    def curve(ranks, pool):  # best-of-n gold of ranking the pool's responses by `ranks`
        return [brute_force(ranks, pool.gold.tolist(), n) for n in (1, 2, 3)]

    by_length = [curve([len(r) for r in p.responses], p) for p in pools]
    by_y = [curve([float(r == "yy") for r in p.responses], p) for p in pools]
    ensemble = [curve([{"yy": 3, "zzz": 2, "x": 1}[r] for r in p.responses], p) for p in pools]
    expected = {"bandit": np.mean([by_length[0], by_y[1], by_y[2]], axis=0), "only:long": np.mean(by_length, axis=0),
                "only:y": np.mean(by_y, axis=0), "ensemble": np.mean(ensemble, axis=0)}
    expected["random"] = (expected["only:long"] + expected["only:y"]) / 2
    assert set(result["curves"]) == set(expected)
    for method, values in expected.items():
        np.testing.assert_allclose(result["curves"][method]["gold"], values, rtol=1e-12, err_msg=method)
        np.testing.assert_allclose(result["pools"][1]["objectives"][method]["gold"],
                                   {"bandit": by_y[1], "only:long": by_length[1], "only:y": by_y[1], "ensemble": ensemble[1],
                                    "random": (np.array(by_length[1]) + by_y[1]) / 2}[method], rtol=1e-12, err_msg=method)
    with pytest.raises(UserError, match="needs gold for every pool"):
        run_bandit_best_of_n(ScriptedSelector(members), [pools[0], pool_of("3", "q", ["a", "b"])])
    with pytest.raises(UserError, match="no pools"):
        run_bandit_best_of_n(ScriptedSelector(members), [])


def test_format_best_of_n_shows_powers_of_two_and_the_largest_n():
    from rewardstack.bon import format_best_of_n

    curves = {"only:length": {"proxy": [float(n) for n in range(1, 18)], "gold": [n / 100 for n in range(1, 18)]}, "mean": {"proxy": [0.5] * 17}}
    assert format_best_of_n({"n": list(range(1, 18)), "curves": curves}).splitlines() == [
        "objective    reward        n=1      n=2      n=4      n=8     n=16     n=17",
        "only:length  proxy       1.000    2.000    4.000    8.000   16.000   17.000",
        "only:length  gold        0.010    0.020    0.040    0.080    0.160    0.170",
        "mean         proxy       0.500    0.500    0.500    0.500    0.500    0.500"]
    assert format_best_of_n({"n": list(range(1, 66)), "curves": {"mean": {"proxy": [n / 4 for n in range(1, 66)]}}}).splitlines() == [
        "objective  reward        n=1      n=2      n=4      n=8     n=16     n=32     n=64     n=65",
        "mean       proxy       0.250    0.500    1.000    2.000    4.000    8.000   16.000   16.250"]


def test_cli_bon_writes_results_summary_and_plot(tmp_path):
    model_dir = tmp_path / "model"
    RewardModel.create(ModelConfig(model="tiny-random", max_length=64, lora_r=2)).save(model_dir)
    rows = [{"prompt": f"{a}+{a}?", "responses": [str(2 * a), str(2 * a + 1), "no idea"], "answer": str(2 * a)} for a in range(4)]
    pools = write_rows(tmp_path / "pools.jsonl", rows)
    out = tmp_path / "bon"
    result = cli("bon", "--reward", model_dir, "--pools", pools, "--output-dir", out)
    assert "4 pools, n up to 3" in result.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n"] == [1, 2, 3] and summary["curves"]["mean"]["gold"][0] == pytest.approx(1 / 3)
    assert len((out / "results.jsonl").read_text().splitlines()) == 4
    assert (out / "best_of_n.png").stat().st_size > 1000
    bad = cli("bon", "--reward", model_dir, "--pools", pools, "--output-dir", out, "--objective", "lcb:1", check_rc=2)
    assert bad.stderr.strip() == "error: objective lcb:1 needs rewards with a std: fit a posterior first (rewardstack laplace)"


def perturbed_policy():
    from rewardstack.backbones import load_backbone

    policy, tokenizer = load_backbone("tiny-random")
    torch.manual_seed(0)
    with torch.no_grad():
        for p in policy.parameters():
            p.normal_(0, 0.3)  # varied next-token choices instead of one repeated token
    return policy, tokenizer


def test_shared_prompt_cache_gives_the_same_tokens_as_plain_generation():
    from rewardstack.sampling import sample_responses

    policy, tokenizer = perturbed_policy()
    prompt = ({"role": "user", "content": "What is 2 + 3?"},)
    shared = sample_responses(policy, tokenizer, [prompt], SamplingConfig(n=3, temperature=0, max_new_tokens=12))
    ids = tokenizer(tokenizer.apply_chat_template(list(prompt), tokenize=False, add_generation_prompt=True),
                    add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        plain = policy.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=12,
                                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    expected = tokenizer.decode(plain[0, ids.shape[1]:][plain[0, ids.shape[1]:] != tokenizer.eos_token_id], skip_special_tokens=True).strip()
    assert shared.responses == [[expected] * 3]


def test_samples_are_seeded_per_prompt():
    from rewardstack.sampling import sample_responses

    policy, tokenizer = perturbed_policy()
    a, b = ({"role": "user", "content": "Name a colour."},), ({"role": "user", "content": "Count to three, slowly, and then stop counting."},)
    config = SamplingConfig(n=4, temperature=1.0, max_new_tokens=8, seed=5)
    both = sample_responses(policy, tokenizer, [a, b], config)  # one batch: a is left-padded
    assert sample_responses(policy, tokenizer, [a], config).responses[0] == both.responses[0]
    assert sample_responses(policy, tokenizer, [a, b], replace(config, generation_batch_size=4)) == both  # one prompt per batch
    assert len(set(both.responses[0])) > 1  # temperature 1 gives different samples
    greedy = sample_responses(policy, tokenizer, [a, b], SamplingConfig(n=2, temperature=0, max_new_tokens=8))
    assert sample_responses(policy, tokenizer, [a, b], SamplingConfig(n=2, temperature=1.0, top_p=1e-6, max_new_tokens=8)) == greedy  # nucleus of one token
    assert both.unfinished <= 8
    with pytest.raises(UserError, match="temperature"):
        SamplingConfig(temperature=-1)


def test_bon_samples_from_a_policy_writes_its_pools_and_takes_a_gold_model(tmp_path):
    from rewardstack.bon import BonConfig, best_of_n

    model = RewardModel.create(ModelConfig(model="tiny-random", max_length=64, lora_r=2))
    torch.nn.init.normal_(model.head.weight, std=1.0)  # rewards that differ per response
    rows = [{"question": "1+1?", "solution": "2"}, {"question": "2+2?", "solution": "4"}, {"solution": "6"}, {"question": "4+4?", "solution": "8"}]
    config = BonConfig(policy="tiny-random", prompt_key="question", answer_key="solution", max_pools=2, skip_invalid=True,
                       sampling=SamplingConfig(n=3, max_new_tokens=6), batch_size=4)
    out = tmp_path / "bon"
    summary = best_of_n(model, config, prompts=rows, output_dir=out)
    assert summary["pools"] == 2 and summary["n"] == [1, 2, 3] and summary["skipped"] == {"missing field": 1}
    assert summary["unfinished_samples"] == 6  # six tokens never end a tiny-random sample
    pools = [json.loads(line) for line in (out / "pools.jsonl").read_text().splitlines()]
    assert [p["prompt"][-1]["content"] for p in pools] == ["1+1?", "2+2?"] and [len(p["responses"]) for p in pools] == [3, 3]
    assert [p["gold"] for p in pools] == [[0.0] * 3] * 2  # random text never answers
    assert json.loads((out / "summary.json").read_text()) == summary
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["key"] for r in results] == [p["id"] for p in pools] and (out / "best_of_n.png").stat().st_size > 1000
    assert best_of_n(model, replace(config, max_pools=1), prompts=rows)["pools"] == 1  # without an output directory
    assert json.loads((out / ".rewardstack-run").read_text()) == {"command": "bon"}
    # the model as its own gold: gold curves equal the proxy curves, which rise with n
    own = best_of_n(model, BonConfig(), pools=out / "pools.jsonl", gold_source=model)
    assert own["curves"]["mean"]["gold"] == pytest.approx(own["curves"]["mean"]["proxy"])
    assert own["curves"]["mean"]["proxy"][0] < own["curves"]["mean"]["proxy"][2] and own["unfinished_samples"] is None
    # the CLI with the same options samples the same pools
    model.save(tmp_path / "model")
    prompts = write_rows(tmp_path / "prompts.jsonl", rows)
    result = cli("bon", "--reward", tmp_path / "model", "--prompts", prompts, "--policy", "tiny-random", "--prompt-key", "question",
                 "--answer-key", "solution", "--max-pools", "2", "--skip-invalid", "--n", "3", "--max-new-tokens", "6",
                 "--batch-size", "4", "--output-dir", tmp_path / "cli")
    assert "2 pools, n up to 3" in result.stdout and "samples cut at --max-new-tokens" in result.stdout
    assert (tmp_path / "cli" / "pools.jsonl").read_text() == (out / "pools.jsonl").read_text()
    assert json.loads((tmp_path / "cli" / "summary.json").read_text())["curves"]["mean"]["proxy"] == pytest.approx(summary["curves"]["mean"]["proxy"])
    result = cli("bon", "--reward", tmp_path / "model", "--output-dir", out, check_rc=2)
    assert "exactly one of --pools" in result.stderr


def test_bon_samples_on_the_configured_device(monkeypatch):
    import rewardstack.sampling
    from rewardstack.bon import BonConfig, best_of_n
    from rewardstack.config import ComputeConfig

    asked = []

    def sample_pools(policy, prompts, config, device):
        asked.append((policy, [p.key for p in prompts], config.n, device))
        return [pool_of(p.key, "q", ["a", "bbb"], [0.0, 1.0]) for p in prompts], 0

    monkeypatch.setattr(rewardstack.sampling, "sample_pools", sample_pools)
    config = BonConfig(policy="some/policy", sampling=SamplingConfig(n=2), compute=ComputeConfig(device="cuda:1"))
    summary = best_of_n(LengthReward(), config, prompts=[{"prompt": "1+1?"}, {"prompt": "2+2?"}])
    assert asked == [("some/policy", ["row 1", "row 2"], 2, "cuda:1")] and summary["unfinished_samples"] == 0


def test_bon_hands_its_batch_size_to_every_source_it_scores_with():
    from rewardstack.bon import BonConfig, best_of_n
    from rewardstack.laser.context import ContextEncoder
    from rewardstack.laser.selector import BanditSelector

    pools = [{"prompt": "p", "responses": ["a", "bbb"], "gold": [0.0, 1.0]}]
    reward, gold = LengthReward(), LengthReward()
    best_of_n(reward, BonConfig(batch_size=3), pools=pools, gold_source=gold)
    members = {"a": LengthReward(), "b": LengthReward()}
    best_of_n(BanditSelector(members, ContextEncoder("words", dim=4)), BonConfig(batch_size=5, feedback="gold"), pools=pools)
    assert (reward.batch_sizes, gold.batch_sizes, members["a"].batch_sizes, members["b"].batch_sizes) == ([3], [3], [5], [5])


class FakeVllm:
    """A stand-in for the vllm package (no GPU here): records what the engine is given and answers each
    prompt with n texts naming the prompt's length and seed; the last sample of a prompt is cut short."""

    def __init__(self, tokenizer):
        import types

        fake, self.tokenizer, self.engines, self.calls = self, tokenizer, [], []

        class LLM:
            def __init__(self, **options):
                fake.engines.append(options)

            def get_tokenizer(self):
                return fake.tokenizer

            def generate(self, prompts, params, use_tqdm=True, lora_request=None):
                fake.calls.append((prompts, params, lora_request))
                return [types.SimpleNamespace(outputs=[
                    types.SimpleNamespace(text=f" {len(p['prompt_token_ids'])} tokens, seed {sp.seed}, sample {j} ",
                                          finish_reason="length" if j == sp.n - 1 else "stop") for j in range(sp.n)])
                    for p, sp in zip(prompts, params)]

        self.module = types.ModuleType("vllm")
        self.module.LLM, self.module.SamplingParams = LLM, lambda **kw: types.SimpleNamespace(**kw)
        self.lora = types.ModuleType("vllm.lora.request")
        self.lora.LoRARequest = lambda name, number, path: (name, number, path)

    def install(self, monkeypatch):
        import importlib.util
        import sys

        for name, module in (("vllm", self.module), ("vllm.lora", self.module), ("vllm.lora.request", self.lora)):
            monkeypatch.setitem(sys.modules, name, module)
        real_find_spec = importlib.util.find_spec
        monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "vllm" else real_find_spec(name, *a))
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


def test_generation_backend_picks_vllm_only_with_the_package_and_a_gpu(monkeypatch):
    import importlib.util

    from rewardstack.sampling import generation_backend

    real_find_spec = importlib.util.find_spec
    for has_vllm, has_gpu in itertools.product([False, True], repeat=2):
        monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, has=has_vllm: (object() if has else None) if name == "vllm" else real_find_spec(name, *a))
        monkeypatch.setattr(torch.cuda, "is_available", lambda has=has_gpu: has)
        assert generation_backend("auto") == ("vllm" if has_vllm and has_gpu else "transformers")
        assert generation_backend("transformers") == "transformers"
        if has_vllm and has_gpu:
            assert generation_backend("vllm") == "vllm"
        else:
            with pytest.raises(UserError, match="the vllm package is not installed" if not has_vllm else "no CUDA GPU is visible"):
                generation_backend("vllm")
    with pytest.raises(UserError, match="backend"):
        SamplingConfig(backend="vlm")


def test_bon_samples_through_vllm_with_the_same_prompts_and_seeds(tmp_path, monkeypatch):
    """Pools sampled through (a stand-in for) vLLM: the engine loads the policy's folder, gets the token ids
    of the same chat-templated prompt the Transformers sampler feeds, one SamplingParams per prompt with seed
    seed + i, and its texts come back stripped, in order, with gold and the cut samples counted."""
    from rewardstack.backbones import tiny_random_backbone
    from rewardstack.sampling import SamplingConfig, VllmSampler, render_chat, sample_pools
    from rewardstack.data.pools import PromptRow

    policy, tokenizer = tiny_random_backbone()
    policy.save_pretrained(tmp_path / "policy")
    tokenizer.save_pretrained(tmp_path / "policy")
    fake = FakeVllm(tokenizer)
    fake.install(monkeypatch)
    rows = [PromptRow("a", ({"role": "user", "content": "What is 2 + 2?"},), "2"),  # "sample 2" is right
            PromptRow("b", ({"role": "user", "content": "Name a colour, please."},), None)]
    config = SamplingConfig(n=3, temperature=0.9, top_p=0.8, max_new_tokens=7, seed=11, vllm_gpu_memory_utilization=0.4)
    pools, unfinished = sample_pools(str(tmp_path / "policy"), rows, config)
    assert fake.engines == [{"model": str(tmp_path / "policy"), "seed": 11, "gpu_memory_utilization": 0.4, "enable_lora": False, "max_lora_rank": 8}]
    prompts, params, lora = fake.calls[0]
    expected_ids = [tokenizer(render_chat(tokenizer, row.prompt), add_special_tokens=False)["input_ids"] for row in rows]
    assert [p["prompt_token_ids"] for p in prompts] == expected_ids and lora is None
    assert [(p.n, p.temperature, p.top_p, p.max_tokens, p.seed) for p in params] == [(3, 0.9, 0.8, 7, 11), (3, 0.9, 0.8, 7, 12)]
    assert pools[1].responses == [f"{len(expected_ids[1])} tokens, seed 12, sample {j}" for j in range(3)]
    assert pools[0].gold.tolist() == [0.0, 0.0, 1.0] and pools[1].gold is None and unfinished == 2
    sampler = VllmSampler(str(tmp_path / "policy"), config, lora_rank=4)  # an adapter per call, each with a new id
    for _ in range(2):
        sampler.sample([rows[0].prompt], config, adapter=tmp_path / "adapter")
    assert fake.engines[-1]["enable_lora"] and [call[2] for call in fake.calls[-2:]] == [
        ("policy-1", 1, str(tmp_path / "adapter")), ("policy-2", 2, str(tmp_path / "adapter"))]
    with pytest.raises(UserError, match="tiny-random: no folder of weights .* built in memory"):
        sample_pools("tiny-random", rows, replace(config, backend="vllm"))


def test_optimize_samples_through_vllm_with_the_policy_adapter_of_the_moment(tmp_path, monkeypatch):
    """optimize --backend vllm: one engine on the base with LoRA on, and every sampling call (training
    batches, then the greedy dev pass) hands it the adapter as the policy has it then."""
    import yaml

    from rewardstack.backbones import tiny_random_backbone
    from rewardstack.config import ComputeConfig
    from rewardstack.laser.optimize import OptimizeConfig, optimize
    from rewardstack.sources import load_source

    policy, tokenizer = tiny_random_backbone()
    policy.save_pretrained(tmp_path / "policy")
    tokenizer.save_pretrained(tmp_path / "policy")
    fake = FakeVllm(tokenizer)
    fake.install(monkeypatch)
    (tmp_path / "digit_rules.py").write_text("def digits(prompt, response):\n    return float(sum(map(int, filter(str.isdigit, response))))\n"
                                       "def few(prompt, response):\n    return -digits(prompt, response)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    tree = {"kind": "bandit", "algorithm": "linucb", "context": {"kind": "words", "dim": 8},
            "members": [{"name": "digits", "source": {"kind": "rule", "function": "digit_rules:digits"}},
                        {"name": "few", "source": {"kind": "rule", "function": "digit_rules:few"}}]}
    (tmp_path / "bandit.yaml").write_text(yaml.safe_dump(tree))
    prompts = write_rows(tmp_path / "prompts.jsonl", [{"prompt": f"What is {i} + 1?", "answer": str(i + 1)} for i in range(4)])
    config = OptimizeConfig(policy=str(tmp_path / "policy"), batch_prompts=2, n=3, iterations=1, lora_r=4, learning_rate=1e-2,
                            backend="vllm", seed=5, compute=ComputeConfig(device="cpu"))  # the stand-in "has" a GPU
    optimize(load_source(tmp_path / "bandit.yaml", allowed_modules=["digit_rules"]), config, prompts, tmp_path / "run", dev=prompts)
    assert len(fake.engines) == 1 and fake.engines[0]["enable_lora"] and fake.engines[0]["max_lora_rank"] == 8
    adapters = [call[2] for call in fake.calls]
    assert [a[1] for a in adapters] == list(range(1, 5))  # dev at iteration 0, two batches, dev at iteration 1
    assert {a[2] for a in adapters} == {str(tmp_path / "run" / "vllm-adapter")}
    assert [p.n for p in fake.calls[0][1]] == [1] * 4 and [p.temperature for p in fake.calls[1][1]] == [0.8, 0.8]
    from safetensors.torch import load_file

    sent, saved = (load_file(d / "adapter_model.safetensors") for d in (tmp_path / "run" / "vllm-adapter", tmp_path / "run" / "iter-1" / "adapter"))
    assert all(torch.equal(sent[k], saved[k]) for k in saved)  # the last call had the trained policy
