"""The claims harness (bench/claims.py): its interval, verdict and records, and a resumable Laplace run."""

import argparse
import gzip
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from rewardstack.bon import expected_best_of_n
from rewardstack.data.pools import load_pools

CLAIMS_PATH = Path(__file__).resolve().parents[1] / "bench" / "claims.py"
spec = importlib.util.spec_from_file_location("claims", CLAIMS_PATH)
claims = sys.modules["claims"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(claims)


def test_paired_bootstrap_resamples_seeds_and_items_together():
    assert claims.paired_bootstrap(np.full((3, 4), 0.25), samples=50) == (0.25, 0.25, 0.25)
    # two seeds (rows) or two items (columns) of 0 and 1: replicates are 0, 0.5 or 1, each end drawn 1/4 of the time
    assert claims.paired_bootstrap(np.array([[0.0], [1.0]]), samples=400) == (0.5, 0.0, 1.0)
    assert claims.paired_bootstrap(np.array([[0.0, 1.0]]), samples=400) == (0.5, 0.0, 1.0)
    spread = np.arange(12.0).reshape(3, 4)
    mean, low, high = claims.paired_bootstrap(spread, samples=400, statistic=np.max)
    assert (mean, high) == (11.0, 11.0) and low < 11.0


def test_verdicts_and_rounding():
    assert [claims.verdict(0.01, 0.2), claims.verdict(-0.2, -0.01), claims.verdict(-0.01, 0.2)] == ["holds", "fails", "inconclusive"]
    assert claims.rounded([1.23456789, -0.000123456789, 12345678.9]) == [1.234568, -0.0001234568, 12345680.0]


def test_records_keep_runs_of_their_settings_only(tmp_path):
    path = tmp_path / "claim.jsonl"
    first = claims.Records(path, {"pairs": 8})
    assert first.add({"seed": 0, "value": 1.5}) == {"settings": {"pairs": 8}, "seed": 0, "value": 1.5}
    claims.Records(path, {"pairs": 16}).add({"seed": 0, "value": 2.5})
    again = claims.Records(path, {"pairs": 8})
    assert again.find(seed=0)["value"] == 1.5 and again.find(seed=1) is None
    assert claims.Records(path, {"pairs": 16}).find(seed=0)["value"] == 2.5
    assert len(path.read_text().splitlines()) == 2


def test_a_quick_laplace_claim_records_scores_and_resumes(tmp_path):
    args = argparse.Namespace(seeds=[0, 1], train_problems=8, test_problems=8, n=4, model="tiny-random", subsets=["head", "all"], out=tmp_path)
    effects, extra, _ = claims.laplace_claim(args, tmp_path / "work")
    records = [json.loads(line) for line in gzip.open(tmp_path / "laplace.jsonl.gz", "rt").read().splitlines()]
    assert [(r["seed"], r["subset"]) for r in records] == [(0, "head"), (0, "all"), (1, "head"), (1, "all")]
    pools = {split: load_pools(next((tmp_path / "laplace-pools").glob(f"{split}-*.jsonl")))[0] for split in ("validation", "test")}
    for split, split_pools in pools.items():
        assert [len(s["reward"]) for s in records[0]["scores"][split]] == [len(p.responses) for p in split_pools]
        assert all(min(s["std"]) > 0 for r in records for s in r["scores"][split])
    # at n = 1 best-of-n is a random sample; at n = N it is the top reward's response
    mean_curve = np.array(extra["curves"]["head, test"]["mean"])
    assert mean_curve[0] == pytest.approx(np.mean([p.gold.mean() for p in pools["test"]]))
    expected = [np.mean([expected_best_of_n(np.array(r["scores"]["test"][i]["reward"]), p.gold, [4])[0] for i, p in enumerate(pools["test"])])
                for r in records if r["subset"] == "head"]
    assert mean_curve[-1] == pytest.approx(np.mean(expected))
    assert extra["prior precision"]["head"] == [records[0]["prior_precision"], records[2]["prior_precision"]]
    assert {e.name for e in effects} >= {"all posterior: lcb:k* − mean, gold at n=4, test", "head posterior: slcb:k* − mean, gold at n=4, test"}

    again, _, _ = claims.laplace_claim(args, tmp_path / "work")
    assert len(gzip.open(tmp_path / "laplace.jsonl.gz", "rt").read().splitlines()) == 4  # nothing rerun
    assert [(e.name, e.mean, e.low, e.high) for e in again] == [(e.name, e.mean, e.low, e.high) for e in effects]


def test_a_quick_haf_claim_trains_the_extra_policy_weights_and_resumes(tmp_path, monkeypatch):
    import rewardstack.training

    trained = []
    real_train = rewardstack.training.train

    def recording_train(config, data, *run_directory):
        if not run_directory:  # train calls itself once with a temporary run directory
            trained.append((config.objective, config.policy_weight, config.seed))
        return real_train(config, data, *run_directory)

    monkeypatch.setattr(rewardstack.training, "train", recording_train)
    args = argparse.Namespace(seeds=[3], pairs=8, test_pairs=4, learning_rate=2e-4, model="tiny-random", policy_weights=[0.5],
                              out=tmp_path)
    effects, extra, _ = claims.haf_claim(args, tmp_path / "work")
    assert trained == [("bt", 0.2, 3), ("haf", 0.2, 3), ("dpo", 0.2, 3), ("haf", 0.5, 3)]
    records = [json.loads(line) for line in (tmp_path / "haf.jsonl").read_text().splitlines()]
    assert [r["arm"] for r in records] == ["bt", "haf", "dpo", "haf α=0.5"]
    assert all(len(r["correct"][world]) == 4 for r in records for world in r["correct"])
    names = [e.name for e in effects]
    assert names[-3:] == ["haf α=0.5 − bt, all worlds", "haf α=0.5 − haf, all worlds", "haf α=0.5 implicit − dpo, all worlds"]
    assert list(extra["accuracy"]) == ["bt", "haf", "haf α=0.5", "haf implicit", "dpo"]
    expected = np.mean(sum(records[3]["correct"].values(), [])) - np.mean(sum(records[0]["correct"].values(), []))
    assert effects[-3].mean == pytest.approx(expected)
    assert extra["per seed − bt"]["haf α=0.5"] == [pytest.approx(expected)]
    assert list(extra["pooled"]) == ["bt", "haf", "haf α=0.5", "haf implicit", "haf α=0.5 implicit", "dpo"]
    assert extra["pooled"]["haf α=0.5 implicit"] == pytest.approx(np.mean(sum(records[3]["implicit"].values(), [])))
    claims.haf_claim(args, tmp_path / "work")
    assert len(trained) == 4  # a rerun finds every run recorded
