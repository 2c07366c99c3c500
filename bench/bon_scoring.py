"""Scoring throughput of best-of-n pools: each prompt run once for its n responses in a packed row (what
RewardModel.rewards does with share_prompts), against scoring every (prompt, response) as an independent
sequence (share_prompts off; rows still packed alike). Same model, same batch size. With --std, also the
time of rewards with their standard deviation (the model's posterior) against plain rewards.

    python bench/bon_scoring.py --pools runs/demo/data/pools.jsonl --prompts 8 --ns 2 4 8 16 [--model-dir runs/demo/run/model] [--std]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from rewardstack.bayes import reward_moments
from rewardstack.config import ComputeConfig
from rewardstack.data.pools import load_pools
from rewardstack.model import ModelConfig, RewardModel


def timed_rewards(model: RewardModel, sequences, batch_size: int, share: bool) -> tuple[np.ndarray, float]:
    model.use(ComputeConfig(device="cpu", share_prompts=share))
    started = time.perf_counter()
    rewards = model.rewards(sequences, batch_size)
    return rewards, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pools", required=True, help="pools load_pools reads, e.g. the demo's data/pools.jsonl or alpaca_eval's outputs")
    parser.add_argument("--model-dir", help="a trained model (its posterior is ignored); default: a fresh SmolLM2 LoRA model")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--ns", type=int, nargs="+", default=[2, 4, 8, 12])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--std", action="store_true", help="also time rewards with std (needs a model with a posterior)")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = RewardModel.from_pretrained(args.model_dir) if args.model_dir else RewardModel.create(ModelConfig(model="smollm2-135m", max_length=256))
    posterior, model.posterior = model.posterior, None
    pools = [pool for pool in load_pools(args.pools, skip_invalid=True)[0] if len(pool.responses) >= max(args.ns)][: args.prompts]
    print(f"{'n':>4} {'responses':>10} {'prompt tok':>11} {'resp tok':>9} {'shared r/s':>11} {'alone r/s':>10} {'speed-up':>9} {'max |Δr|':>9}")
    for n in args.ns:
        sequences = [
            model.encoder.encode(pool.prompt, pool.responses[:n])[0]
            for pool in pools
        ]
        sequences = [s for group in sequences for s in group]
        model.rewards(sequences[: args.batch_size], args.batch_size)  # warm-up
        shared, t_shared = timed_rewards(model, sequences, args.batch_size, share=True)
        alone, t_alone = timed_rewards(model, sequences, args.batch_size, share=False)
        print(f"{n:>4} {len(sequences):>10} {np.mean([len(s.prompt_ids) for s in sequences]):>11.1f} "
              f"{np.mean([len(s.response_ids) for s in sequences]):>9.1f} {len(sequences) / t_shared:>11.2f} "
              f"{len(sequences) / t_alone:>10.2f} {t_alone / t_shared:>8.2f}x {np.abs(shared - alone).max():>9.1e}")
        if args.std and posterior is not None:
            model.posterior = posterior
            model.use(ComputeConfig(device="cpu"))  # prompts shared, as for `shared`
            started = time.perf_counter()
            mean, _ = reward_moments(model, sequences, args.batch_size)
            t_std = time.perf_counter() - started
            model.posterior = None
            print(f"     with std ({posterior.subset} posterior): {len(sequences) / t_std:.2f} responses/s, "
                  f"{t_std / t_shared:.2f}x the time of shared plain scoring (max |Δ mean| {np.abs(mean - shared).max():.1e})")


if __name__ == "__main__":
    main()
