"""Evaluation rows with several responses or A/B labels, and RewardBench v1 / v2 scoring, on fixtures whose
rewards are response lengths in characters, so every expected value below is computed by hand."""

import dataclasses
import json
import math

import numpy as np
import pytest
import yaml

from rewardstack.comparisons import bootstrap_interval, load_comparisons, row_outcomes, style_split, ties_score
from rewardstack.errors import UserError
from rewardstack.evaluation import evaluate, format_table
from rewardstack.sources import Rule

from conftest import cli, write_rows

LENGTH = Rule(lambda prompt, response: float(len(response)), "length")


def rb2_row(subset, chosen, rejected, row_id=None):
    return {"prompt": "q", "chosen": chosen, "rejected": rejected, "subset": subset, "id": row_id}


def test_rewardbench2_gives_a_shared_top_score_one_over_the_number_tied():
    rows = [
        rb2_row("Factuality", ["aaa"], ["bbb", "cc", "d"]),  # tied with one rejected at the top: 1/2
        rb2_row("Factuality", ["xx"], ["yy", "zz", "a"]),  # three at the top: 1/3
        rb2_row("Math", ["a"], ["bb", "c", "d"]),  # not at the top: 0
        rb2_row("Math", ["aaaa"], ["bb", "c", "ddd"]),  # alone at the top: 1
    ]
    result = evaluate(LENGTH, {"rb2": rows}, format="rewardbench2")["rb2"]
    bench = result["rewardbench2"]
    assert bench["subsets"] == {"Factuality": pytest.approx((1 / 2 + 1 / 3) / 2), "Math": 0.5}
    assert bench["overall"] == pytest.approx(((1 / 2 + 1 / 3) / 2 + 0.5) / 2)
    # The same rows under the generic aggregation: `all` needs every chosen strictly above every rejected.
    assert result["all"] == 0.25 and result["all_tie_half"] == pytest.approx((0.5 + 0.5 + 0 + 1) / 4)


def ties_rows():
    """ref/tied rows for three prompts; correct answers in chosen (lengths in the comments)."""
    return [
        rb2_row("Ties", ["aaaaa"], ["aa", "aaa"], "ref:1"),  # 5 vs 2, 3: accurate, cim 2
        rb2_row("Ties", ["aaaa", "aaaaaa"], ["a", "aa"], "tied:1"),  # 4, 6 vs 1, 2: accurate, cim 2, dcm 2
        rb2_row("Ties", ["bb"], ["bbbb"], "ref:2"),  # 2 vs 4: wrong, cim −2
        rb2_row("Ties", ["bbb", "bbbbbbbb"], ["b"], "tied:2"),  # 3, 8 vs 1: accurate, cim 2, dcm 5
        rb2_row("Ties", ["cccccccc"], ["c"], "ref:3"),  # 8 vs 1: accurate, cim 7
        rb2_row("Ties", ["cccccc", "ccccccc"], ["cc"], "tied:3"),  # 6, 7 vs 2: accurate, cim 4, dcm 1
    ]


def test_the_ties_subset_follows_the_weighted_formula():
    rows, _ = load_comparisons(ties_rows())
    rewards = [(np.array([float(len(t)) for t in r.chosen]), np.array([float(len(t)) for t in r.rejected])) for r in rows]
    # acc(tied) = 3/3, acc(ref) = 2/3; cim_tied > dcm_tied: [2 > 2, 2 > 5, 4 > 1] = 1/3;
    # min(cim_ref, cim_tied) > dcm_tied: [2 > 2, −2 > 5, 4 > 1] = 1/3; tanh(min/dcm − 1): [0, tanh(−1.4), tanh(3)].
    expected = 0.3 * 1 + 0.3 * 2 / 3 + 0.2 / 3 + 0.2 / 3 + 0.01 * (0 + math.tanh(-1.4) + math.tanh(3)) / 3
    assert ties_score(rows, rewards) == pytest.approx(expected, abs=1e-12)
    assert evaluate(LENGTH, {"t": ties_rows()}, format="rewardbench2")["t"]["rewardbench2"]["subsets"] == {"Ties": pytest.approx(expected, abs=1e-12)}
    with pytest.raises(UserError, match="ref:N or tied:N"):
        ties_score([dataclasses.replace(rows[0], row_id="x")], rewards[:1])


def test_rewardbench_v1_weights_subsets_by_the_official_prompt_counts():
    rows = [
        {"prompt": "q", "chosen": "aaa", "rejected": "b", "subset": "alpacaeval-easy"},  # won
        {"prompt": "q", "chosen": "aaaa", "rejected": "bb", "subset": "alpacaeval-easy"},  # won: subset 1.0
        {"prompt": "q", "chosen": "aa", "rejected": "b", "subset": "mt-bench-easy"},  # won
        {"prompt": "q", "chosen": "a", "rejected": "bbb", "subset": "mt-bench-easy"},  # lost: subset 0.5
        {"prompt": "q", "chosen": "a", "rejected": "bb", "subset": "hep-cpp"},  # lost: Reasoning 0
        {"prompt": "q", "chosen": "aa", "rejected": "bb", "subset": "xstest-should-respond"},  # a tie: strict 0
    ]
    result = evaluate(LENGTH, {"v1": rows}, format="rewardbench")["v1"]
    bench = result["rewardbench"]
    chat = (100 * 1.0 + 28 * 0.5) / (100 + 28)  # alpacaeval-easy 100 prompts, mt-bench-easy 28
    assert bench["sections"] == {"Chat": pytest.approx(chat), "Safety": 0.0, "Reasoning": 0.0}  # no Chat Hard subset present
    assert bench["overall"] == pytest.approx(chat / 3)
    assert result["strict_accuracy"] == pytest.approx(3 / 6) and result["accuracy"] == pytest.approx(3.5 / 6)
    assert "RewardBench v1" in format_table({"v1": result}) and "strict (a tie is a loss)" in format_table({"v1": result})


def test_aligned_styles_split_the_matrix_into_easy_normal_and_hard():
    first = (np.array([3.0, 5.0, 7.0]), np.array([2.0, 4.0, 8.0]))  # wins [[1,0,0],[1,1,0],[1,1,0]]
    second = (np.array([1.0, 2.0, 3.0]), np.array([1.0, 1.0, 1.0]))  # wins [[0,0,0],[1,1,1],[1,1,1]], row 0 all ties
    assert style_split([first, second]) == {"easy": 1.0, "normal": pytest.approx(2 / 3), "hard": pytest.approx(1 / 6)}
    assert style_split([(np.array([1.0]), np.array([2.0, 3.0]))]) is None  # not square
    assert row_outcomes(*second) == {"all": 0.0, "all_tie_half": 0.5, "mean": pytest.approx(6 / 9), "mean_tie_half": pytest.approx(7.5 / 9)}
    rows = [{"prompt": "q", "chosen": ["aaa", "aaaaa", "aaaaaaa"], "rejected": ["bb", "bbbb", "bbbbbbbb"]},
            {"prompt": "q", "chosen": ["a", "aa", "aaa"], "rejected": ["b", "c", "d"]}]
    result = evaluate(LENGTH, {"styles": rows})["styles"]
    assert result["styles"] == {"easy": 1.0, "normal": pytest.approx(2 / 3), "hard": pytest.approx(1 / 6)}
    assert result["comparisons"] == 18 and result["mean"] == pytest.approx((5 / 9 + 6 / 9) / 2) and result["mean_tie_half"] == pytest.approx((5 / 9 + 7.5 / 9) / 2)


def test_ab_labels_pick_the_winner_and_keep_ties_apart():
    rows = [
        {"prompt": "q", "response_A": "aaaa", "response_B": "b", "label": "A>B"},  # A longer: right
        {"prompt": "q", "response_A": "a", "response_B": "bbb", "label": "B>A"},  # B longer: right
        {"prompt": "q", "response_A": "aa", "response_B": "bbbb", "label": "A"},  # A shorter: wrong
        {"prompt": "q", "response_A": "cc", "response_B": "dd", "label": "tie"},  # |2 − 2| = 0
        {"prompt": "q", "response_A": "x", "response_B": "yyy", "label": "A=B"},  # |1 − 3| = 2
    ]
    result = evaluate(LENGTH, {"ab": rows})["ab"]
    assert (result["rows"], result["compared_rows"], result["all"]) == (5, 3, pytest.approx(2 / 3))
    assert result["tie_rows"] == {"rows": 2, "mean_abs_margin": 1.0}
    farm = [{"instruction": "say", "input": "", "output_1": "aa", "output_2": "b", "preference": 2},
            {"instruction": "say", "input": "x", "output_1": "aaa", "output_2": "b", "preference": 1}]
    compared, _ = load_comparisons(farm)
    assert [(c.chosen, c.rejected) for c in compared] == [(("b",), ("aa",)), (("aaa",), ("b",))]
    assert compared[1].prompt == ({"role": "user", "content": "say\n\nx"},)
    renamed = [{"prompt": "q", "left": "aaa", "right": "b", "verdict": "B>A"}]
    assert evaluate(LENGTH, {"r": renamed}, ab_keys=("left", "right", "verdict"))["r"]["strict_accuracy"] == 0.0  # no tie: plain pairs
    with pytest.raises(UserError, match=r"row 1: field 'label': 'A>>B' is not A>B"):
        load_comparisons([{"prompt": "q", "response_A": "a", "response_B": "b", "label": "A>>B"}])


def test_strict_and_tie_half_accuracy_with_bootstrap_intervals():
    rows = [{"prompt": "q", "chosen": "aa", "rejected": "b"}, {"prompt": "q", "chosen": "cc", "rejected": "dd"}]
    result = evaluate(LENGTH, {"pairs": rows})["pairs"]
    assert (result["strict_accuracy"], result["accuracy"]) == (0.5, 0.75)
    assert bootstrap_interval([1.0] * 7) == [1.0, 1.0] and bootstrap_interval([0.0, 1.0], seed=3) == bootstrap_interval([0.0, 1.0], seed=3)
    low, high = bootstrap_interval([0.0, 1.0] * 50)
    assert low < 0.5 < high and high - low == pytest.approx(2 * 1.96 * 0.05, abs=0.03)  # ≈ normal interval of a mean of 100 coin flips
    assert result["strict_accuracy_ci"][0] <= 0.5 <= result["strict_accuracy_ci"][1]


def test_eval_cli_writes_per_row_records_plots_and_rewardbench_tables(tmp_path):
    (tmp_path / "length.yaml").write_text(yaml.safe_dump({"kind": "rule", "builtin": "length", "unit": "characters"}))
    data = write_rows(tmp_path / "rb2.jsonl", [rb2_row("Math", ["aaa"], ["bbb", "cc", "d"]), rb2_row("Math", ["aaaa"], ["b", "cc", "d"])])
    pairs = write_rows(tmp_path / "pairs.jsonl", [{"prompt": "q", "chosen": "a" * (i + 2), "rejected": "b" * (2 * i % 5 + 1), "subset": f"s{i % 2}"}
                                                 for i in range(8)])
    result = cli("eval", "--reward", tmp_path / "length.yaml", "--data", data, "--data", pairs, "--format", "rewardbench2",
                 "--per-row", tmp_path / "rows.jsonl", "--plot", tmp_path / "plots", "--output", tmp_path / "m.json")
    records = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    assert len(records) == 10 and records[0]["chosen_rewards"] == [3.0] and records[0]["rejected_rewards"] == [3.0, 2.0, 1.0]
    assert "RewardBench 2" in result.stdout and "overall 0.7500" in result.stdout  # Math: (1/2 + 1) / 2
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["reliability.png", "subsets.png"]  # no std: no third plot
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in (tmp_path / "plots").iterdir())
    assert "per_row" not in json.loads((tmp_path / "m.json").read_text())[str(data)]
    # An ensemble of two length rules has a std (their spread): the third plot appears.
    (tmp_path / "two.yaml").write_text(yaml.safe_dump({"kind": "ensemble", "members": [
        {"name": "chars", "source": {"kind": "rule", "builtin": "length", "unit": "characters"}},
        {"name": "words", "source": {"kind": "rule", "builtin": "length", "unit": "words"}}]}))
    cli("eval", "--reward", tmp_path / "two.yaml", "--data", pairs, "--plot", tmp_path / "plots2")
    assert sorted(p.name for p in (tmp_path / "plots2").iterdir()) == ["reliability.png", "std_vs_error.png", "subsets.png"]
    bad = cli("eval", "--reward", tmp_path / "length.yaml", "--data", data, "--format", "rewardbench", check_rc=2)
    assert "v1 rows are pairs" in bad.stderr
