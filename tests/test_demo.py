import json
import re

import numpy as np
import pytest

import rewardstack.demo
from rewardstack.data.pools import Pool, gold_pairs
from rewardstack.demo import DemoConfig, run_demo
from rewardstack.errors import UserError
from rewardstack.gold import answer_is_correct
from rewardstack.synthetic import word_problems


def test_word_problems_have_the_right_answers():
    for row in word_problems(60, seed=3):
        numbers = [int(x) for x in re.findall(r"\d+", row["prompt"])]
        assert len(numbers) == 2 and all(2 <= x <= 9 for x in numbers)
        expected = numbers[0] + numbers[1] if "more" in row["prompt"] else numbers[0] - numbers[1]
        assert int(row["answer"]) == expected >= 0


def test_gold_pairs_pair_better_over_worse_without_repeating_texts():
    prompt = ({"role": "user", "content": "q"},)
    pools = [
        Pool("a", prompt, ["right", "wrong", "right", "other"], ["0", "1", "2", "3"], np.array([1.0, 0.0, 1.0, 0.0])),
        Pool("b", prompt, ["x", "y"], ["0", "1"], np.array([0.2, 0.4])),  # gap below min_gap: no pair
    ]
    rows = gold_pairs(pools, per_pool=10)
    assert sorted((r["chosen"], r["rejected"]) for r in rows) == [("right", "other"), ("right", "other"), ("right", "wrong"), ("right", "wrong")]
    assert len(gold_pairs(pools, per_pool=3)) == 3
    assert {(r["chosen"], r["rejected"]) for r in gold_pairs(pools, per_pool=10, min_gap=0.1)} >= {("y", "x")}
    with pytest.raises(UserError, match="pool c: preference pairs need gold"):
        gold_pairs([Pool("c", prompt, ["x"], ["0"])], per_pool=1)


def fake_policy(responses_for):
    """A stand-in for sample_pools: responses_for(answer, n) gives each prompt's samples."""

    def sample_pools(policy_name, prompts, config):
        pools = []
        for row in prompts:
            responses = responses_for(int(row.answer), config.n)
            gold = np.array([float(answer_is_correct(r, row.answer)) for r in responses])
            pools.append(Pool(row.key, row.prompt, responses, [str(i) for i in range(len(responses))], gold))
        return pools, 1

    return sample_pools


def test_demo_trains_fits_and_reports_best_of_n(tmp_path, monkeypatch):
    def responses(answer, n):  # one in three right
        return [f"The answer is {answer}." if i % 3 == 0 else f"I think it is {answer + i}." for i in range(n)]

    monkeypatch.setattr(rewardstack.demo, "sample_pools", fake_policy(responses))
    config = DemoConfig(model="tiny-random", train_prompts=4, bon_prompts=3, n=6, pairs_per_prompt=2, lcb=(1.0,))
    summary = run_demo(tmp_path, config)

    for name in ("report.md", "best_of_n.png", "results.jsonl", "summary.json", "eval.json", "run/model/posterior.safetensors",
                 "reliability.png", "subsets.png", "std_vs_error.png",
                 "data/problems.jsonl", "data/pools.jsonl", "data/train_pairs.jsonl", "data/test_pairs.jsonl"):
        assert (tmp_path / name).exists(), name
    assert json.loads(json.dumps(summary)) == json.loads((tmp_path / "summary.json").read_text())
    assert summary["train_pairs"] == 8 and summary["pools"] == 3 and summary["unfinished_samples"] == 1
    assert summary["policy_accuracy"] == pytest.approx(2 / 6)
    assert set(summary["curves"]) == {"mean", "lcb:1", "oracle"}
    for curve in summary["curves"].values():  # n = 1 is random choice: the mean gold
        assert curve["gold"][0] == pytest.approx(2 / 6)
    assert summary["curves"]["oracle"]["gold"][-1] == 1.0
    assert summary["curves"]["oracle"]["gold"][1] == pytest.approx(1 - (4 * 3) / (6 * 5))  # 1 − P(both wrong)
    assert summary["reward_model"]["pairs"] == 6
    report = (tmp_path / "report.md").read_text()
    assert "oracle" in report and "lcb:1" in report and "Laplace predictive NLL" in report
    assert "![reliability](reliability.png)" in report and "![std_vs_error](std_vs_error.png)" in report
    assert "per_row" not in json.loads((tmp_path / "eval.json").read_text())["held-out pairs"]


def test_demo_without_mixed_answers_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(rewardstack.demo, "sample_pools", fake_policy(lambda answer, n: ["no idea"] * n))
    with pytest.raises(UserError, match="no training pairs"):
        run_demo(tmp_path, DemoConfig(model="tiny-random", train_prompts=2, bon_prompts=1, n=2))
