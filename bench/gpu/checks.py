"""GPU checks of the packed forward pass: on CUDA, packed and prefix-shared rewards and log π equal each
sequence run alone (float32, every attention kernel), bf16 autocast stays close to float32, a Laplace
posterior fitted on the device equals the CPU's, and the throughput of scoring best-of-n pools with and
without prompt sharing. Prints one line per check.

    python bench/gpu/checks.py [--pools runs/demo/data/pools.jsonl] [--model smollm2-135m] [--device cuda]

`--device cpu --model tiny-random` is a quick dry run of the script itself.

For the training comparison on a GPU run bench/train_vs_trl.py with --device cuda --bf16.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace

import numpy as np
import torch

from rewardstack.config import ComputeConfig
from rewardstack.data.encode import as_messages
from rewardstack.model import ModelConfig, RewardModel

PROMPT = "Explain, in two sentences, why the sky looks blue during the day and red at sunset."


def alone_rewards(model: RewardModel, sequences) -> np.ndarray:
    with torch.no_grad():
        out = []
        for s in sequences:
            hidden = model.decoder(input_ids=torch.tensor([s.ids], device=model.head.weight.device)).last_hidden_state
            out.append(float(model.head(hidden[0, -1])))
    return np.array(out)


def laplace_on_device(args) -> None:
    """A LoRA + head Laplace posterior fitted and used on the device equals the one on the CPU (float32)."""
    from rewardstack.bayes import fit_laplace
    from rewardstack.config import LaplaceConfig
    from rewardstack.synthetic import arithmetic_pairs

    rows = arithmetic_pairs(16, seed=0)
    fitted = {}
    for device in ("cpu", args.device):
        torch.manual_seed(0)
        model = RewardModel.create(ModelConfig(model=args.model, max_length=256, lora_r=4))
        with torch.no_grad():
            for weight in model.trainable_parameters().values():
                weight.normal_(0, 0.02)
        model.use(ComputeConfig(device=device))
        posterior = fit_laplace(model, rows, LaplaceConfig(max_factor_size=256, factor_rank=16))
        scored = model.score([r["prompt"] for r in rows[:8]], [r["chosen"] for r in rows[:8]])
        fitted[device] = {"log_likelihood": posterior.log_likelihood, "prior_precision": posterior.prior_precision,
                          "std": scored.std, "on": str(model.head.weight.device)}
    cpu, device = fitted["cpu"], fitted[args.device]
    print(json.dumps({"check": "laplace on the device = on the cpu", "devices": [cpu["on"], device["on"]],
                      "log_likelihood": [cpu["log_likelihood"], device["log_likelihood"]],
                      "prior_precision": [cpu["prior_precision"], device["prior_precision"]],
                      "max_rel_std_diff": float(np.max(np.abs(device["std"] / cpu["std"] - 1)))}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--pools", help="generic pools for the throughput check (default: generated responses)")
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: these checks are for a GPU machine (--device cpu for a dry run)")
    synchronize = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    torch.manual_seed(0)
    model = RewardModel.create(ModelConfig(model=args.model, max_length=1024))
    with torch.no_grad():
        model.head.weight.normal_(0, 0.05)
    responses = [f"Response {i}: " + "Light scatters off small molecules. " * (1 + i % 5) for i in range(args.n)]
    sequences = model.encoder.encode(as_messages(PROMPT), responses)[0]
    for kernel in ("sdpa", "eager", "flex_attention"):
        try:
            model.use(ComputeConfig(device=args.device, attn_implementation=kernel, pack_tokens=4096))
            expected = alone_rewards(model, sequences)
            packed = model.rewards(sequences, batch_size=4)
            print(json.dumps({"check": "packed = alone", "kernel": kernel, "max_abs_diff": float(np.abs(packed - expected).max()),
                              "reward_scale": float(np.abs(expected).max())}))
        except Exception as err:  # a kernel missing on this machine is a finding, not a crash
            print(json.dumps({"check": "packed = alone", "kernel": kernel, "error": f"{type(err).__name__}: {str(err)[:200]}"}))
    compute = ComputeConfig(device=args.device)
    model.use(compute)
    full = model.rewards(sequences)
    model.use(replace(compute, bf16=True))
    half = model.rewards(sequences)
    print(json.dumps({"check": "bf16 vs float32", "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device, "max_abs_diff": float(np.abs(half - full).max()), "reward_std": float(full.std())}))

    laplace_on_device(args)

    pools = [json.loads(line) for line in open(args.pools)] if args.pools else [{"prompt": PROMPT, "responses": responses}] * 64
    sequences = [s for pool in pools for s in model.encoder.encode(as_messages(pool["prompt"]), pool["responses"][: args.n])[0]]
    for bf16 in (False, True):
        timings = {}
        for share in (False, True):
            model.use(ComputeConfig(device=args.device, share_prompts=share, bf16=bf16, pack_tokens=8192))
            model.rewards(sequences[:64], batch_size=64)
            synchronize()
            started = time.perf_counter()
            model.rewards(sequences, batch_size=64)
            synchronize()
            timings[share] = time.perf_counter() - started
        print(json.dumps({"check": "best-of-n scoring", "bf16": bf16, "responses": len(sequences),
                          "alone_responses_per_s": len(sequences) / timings[False], "shared_responses_per_s": len(sequences) / timings[True],
                          "speed_up": timings[False] / timings[True]}))


if __name__ == "__main__":
    main()
