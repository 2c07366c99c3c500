"""Laplace over LoRA weights: rewardstack against the bayesian-lora package on the same reward model.

Both fit a K-FAC Laplace posterior over the LoRA matrices only (the reward head fixed) on the same pairs,
with the same prior precision (rewardstack's marginal-likelihood choice), and give the variance of each
held-out response's reward. bayesian-lora sees the model as a two-class classifier per pair, logits
(r_chosen, r_rejected), whose softmax is exactly the Bradley–Terry likelihood; its K-FAC uses the last
token of each sequence and labels sampled from the model (Fisher), the wide side of every LoRA matrix's
factors at rank --n-kfac (its variance formula needs that). Its
hooks read position −1, so its passes use left padding with position ids from the attention mask.
Reported: fit time, time per predictive variance, and agreement of the variances.

Needs bayesian-lora, which is not a rewardstack dependency; in its own environment:

    python -m venv bench/results/venv-blora
    bench/results/venv-blora/bin/pip install torch==2.13.0 jaxtyping tqdm -e .
    bench/results/venv-blora/bin/pip install --no-deps bayesian-lora==0.0.6
    bench/results/venv-blora/bin/python bench/laplace_vs_bayesian_lora.py --model-dir runs/demo/run/model \\
        --data runs/demo/data/train_pairs.jsonl --test runs/demo/data/test_pairs.jsonl
"""

from __future__ import annotations

import time

import numpy as np
import torch
from bayesian_lora import calculate_kronecker_factors, cholesky_decompose_small_factors, variance
from bayesian_lora.main import jacobian_mean

from rewardstack.model import RewardModel

from common import comparison_arguments, left_padded_rewards, pad_left, print_comparison, rewardstack_lora_laplace


class LeftPadded(torch.nn.Module):
    """The reward model on left-padded batches, rewards as (batch, 1) logits."""

    def __init__(self, model: RewardModel):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return left_padded_rewards(self.model, input_ids, attention_mask)


def main() -> None:
    parser = comparison_arguments(__doc__.splitlines()[0])
    parser.add_argument("--variance-batch-size", type=int, default=2, help="sequences per bayesian-lora Jacobian (jacrev); at least 2")
    parser.add_argument("--n-kfac", type=int, default=10, help="bayesian-lora's rank for the wide side of each factor pair")
    args = parser.parse_args()
    ours = rewardstack_lora_laplace(args)
    model, pairs, sequences = ours.model, ours.pairs, ours.sequences
    wrapper = LeftPadded(model)
    pad = model.tokenizer.pad_token_id
    batches = [list(range(i, min(i + args.batch_size, len(pairs)))) for i in range(0, len(pairs), args.batch_size)]
    loader = [pad_left([pairs.chosen[i].ids for i in b] + [pairs.rejected[i].ids for i in b], pad) for b in batches]

    def forward_call(module, batch):
        rewards = module(batch["input_ids"], batch["attention_mask"]).squeeze(-1)
        half = len(rewards) // 2
        return torch.stack([rewards[:half], rewards[half:]], dim=1)

    started = time.perf_counter()
    # its variance() needs every factor to be either r × r (Cholesky) or d × n_kfac (low rank): the wide side
    # of each LoRA matrix is kept at rank n_kfac, whatever its size
    threshold = model.config.lora_r + 1
    factors = calculate_kronecker_factors(wrapper, forward_call, loader, n_kfac=args.n_kfac, lr_threshold=threshold, target_module_keywords=["lora"])
    factors = cholesky_decompose_small_factors(factors, threshold, "cpu", torch.float32)
    theirs_fit = time.perf_counter() - started
    wrapper.eval()
    started = time.perf_counter()
    theirs_var = np.empty(len(sequences))
    for i in range(0, len(sequences), args.variance_batch_size):
        inputs = pad_left([s.ids for s in sequences[i : i + args.variance_batch_size]], pad)
        # its variance() squeezes the Jacobian, so it needs ≥ 2 sequences and ≥ 2 logits: a constant second logit
        jacobian, _ = jacobian_mean(wrapper, inputs, output_callback=lambda reward: torch.cat([reward, torch.zeros_like(reward)], dim=1))
        var = variance(inputs, jacobian, factors, torch.tensor(1.0 / ours.prior_precision), 2, model.config.lora_r, args.n_kfac, "cpu")
        theirs_var[i : i + len(inputs["input_ids"])] = var[:, 0, 0].detach().double().numpy()
    theirs_predict = time.perf_counter() - started

    print_comparison(ours, "bayesian-lora", theirs_fit, theirs_predict, theirs_var)


if __name__ == "__main__":
    main()
