"""Laplace reward model on real data: quality (MAP vs Laplace predictive, OOD detection by std) and cost.

SmolLM2-135M, LoRA r=16 on all linear layers, trained one epoch (batch 8, lr 1e-4) with Bradley–Terry on
the first --pairs valid pairs of hh_rlhf_harmless/train; the posterior is fitted on the same pairs. The
prior precision is chosen two ways: by marginal likelihood (evidence) and by Laplace NLL on the next
--val-pairs valid training pairs (val); never on a test split. Evaluated on the first --test-pairs valid
pairs of hh_rlhf_harmless/test (in distribution), of held-out alpaca_eval pairs (see common.alpaca_pairs)
and of PandaLM (out of distribution): accuracy, NLL, ECE, Brier of the MAP and of the Laplace predictive,
and AUROC of reward std for telling each out-of-distribution set's responses from hh test's.
Cost: fit time relative to the training epoch, scoring with std relative to without, posterior size.

    python bench/laplace_quality.py [--pairs 256] [--val-pairs 64] [--test-pairs 128] [--max-length 256]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from rewardstack.bayes import fit_laplace, pair_moments, probit_logit
from rewardstack.bayes.predict import validation_nll_curve
from rewardstack.config import TrainConfig
from rewardstack.data.encode import encode_pairs
from rewardstack.data.load import Columns, load_preferences
from rewardstack.metrics import auroc, logit_metrics
from rewardstack.model import RewardModel
from rewardstack.training import train

from common import DATA, alpaca_pairs, head_rows, write_rows

HH = DATA / "hh_rlhf_harmless"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=256)
    parser.add_argument("--val-pairs", type=int, default=64)
    parser.add_argument("--test-pairs", type=int, default=128)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--out", type=Path, default=Path("bench/results/laplace_quality.json"))
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-laplace-"))
    train_file = write_rows(head_rows(HH / "train.jsonl.gz", args.pairs), work / "train.jsonl")
    val_file = write_rows(head_rows(HH / "train.jsonl.gz", args.val_pairs, skip=args.pairs), work / "val.jsonl")
    tests = {
        "hh test": write_rows(head_rows(HH / "test.jsonl.gz", args.test_pairs), work / "hh_test.jsonl"),
        "alpaca_eval": write_rows(alpaca_pairs()[1][: args.test_pairs], work / "alpaca.jsonl"),
        "pandalm": write_rows(head_rows(DATA / "pandalm" / "test.jsonl.gz", args.test_pairs), work / "pandalm.jsonl"),
    }
    config = TrainConfig(model=args.model, max_length=args.max_length, lora_r=16, batch_size=8, learning_rate=1e-4,
                         columns=Columns())
    _, summary = train(config, train_file, output_dir=work / "run")
    model = RewardModel.from_pretrained(work / "run" / "model")

    posterior = fit_laplace(model, train_file)
    val_pairs = encode_pairs(model.encoder, load_preferences(val_file)[0])
    grid, val_nll = validation_nll_curve(model, val_pairs)
    priors = {"evidence": posterior.prior_precision, "val": float(grid[int(np.argmin(val_nll))])}

    results = {"settings": vars(args) | {"out": str(args.out)}, "train": summary, "priors": priors,
               "fit_seconds": posterior.info["fit_seconds"], "posterior_mib": posterior.memory_bytes() / 2**20,
               "parameters": posterior.n_params, "evidence_curve": posterior.info["evidence_curve"], "sets": {}}
    stds = {}
    map_seconds = laplace_seconds = 0.0
    for name, path in tests.items():
        encoded = encode_pairs(model.encoder, load_preferences(path)[0])
        started = time.perf_counter()
        rewards = model.rewards(encoded.chosen + encoded.rejected)
        map_seconds += time.perf_counter() - started
        started = time.perf_counter()
        moments = pair_moments(model, encoded, prior_precisions=list(priors.values()))
        laplace_seconds += time.perf_counter() - started
        delta = moments["chosen"] - moments["rejected"]
        entry = {"pairs": len(encoded), "truncated": encoded.truncated,
                 "map": logit_metrics(rewards[: len(encoded)] - rewards[len(encoded) :])}
        for column, prior in enumerate(priors):
            entry[prior] = logit_metrics(probit_logit(delta, moments["var_delta"][:, column]))
            std = np.sqrt(np.concatenate([moments["var_chosen"][:, column], moments["var_rejected"][:, column]]))
            entry[prior]["mean_std"] = float(std.mean())
            stds[(name, prior)] = std
        results["sets"][name] = entry
    for name in ("alpaca_eval", "pandalm"):
        for prior in priors:
            results["sets"][name][prior]["ood_auroc"] = auroc(stds[("hh test", prior)], stds[(name, prior)])
    results["scoring_seconds"] = {"map": map_seconds, "laplace": laplace_seconds}

    epoch = summary["train_seconds"]
    print(f"trained {summary['train']['pairs']} pairs in {epoch:.1f} s; posterior over {posterior.n_params:,} weights "
          f"({results['posterior_mib']:.1f} MiB) fitted in {results['fit_seconds']:.1f} s = {results['fit_seconds'] / epoch:.2f}x the epoch")
    print(f"prior precision: evidence {priors['evidence']:.4g}, validation NLL {priors['val']:.4g}")
    print(f"scoring {sum(e['pairs'] for e in results['sets'].values()) * 2} responses: MAP {map_seconds:.1f} s, "
          f"with std {laplace_seconds:.1f} s = {laplace_seconds / map_seconds:.2f}x")
    print(f"\n{'set':<13}{'predictive':<12}{'acc':>7}{'nll':>8}{'ece':>8}{'brier':>8}{'mean std':>10}{'OOD AUROC':>11}")
    for name, entry in results["sets"].items():
        for kind in ("map", *priors):
            m = entry[kind]
            auc = f"{m['ood_auroc']:.3f}" if "ood_auroc" in m else ""
            std = f"{m['mean_std']:.3f}" if "mean_std" in m else ""
            print(f"{name:<13}{kind:<12}{m['accuracy']:>7.3f}{m['nll']:>8.3f}{m['ece']:>8.3f}{m['brier']:>8.3f}{std:>10}{auc:>11}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str))
    print(f"details: {args.out}")


if __name__ == "__main__":
    main()
