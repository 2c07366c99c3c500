"""Laplace over LoRA weights: rewardstack against laplace-torch (Kron Laplace) on the same reward model.

Both fit a K-FAC Laplace posterior over the LoRA matrices only (the reward head fixed) on the same pairs,
with the same prior precision (rewardstack's marginal-likelihood choice), and give the variance of each
held-out response's reward. laplace-torch sees each pair as a two-class classifier with logits
(r_chosen, r_rejected) — softmax of which is the Bradley–Terry likelihood — on left-padded batches
(reward at position −1, position ids from the attention mask); the variance of one response is the
(0, 0) entry of its GLM predictive covariance for the pair (response, response).
Reported: fit time, time per predictive variance, and agreement of the variances.

laplace-torch declares torchvision, which would pull another torch; in its own environment it installs
and imports without it:

    python -m venv bench/results/venv-laplace
    bench/results/venv-laplace/bin/pip install torch==2.13.0 numpy scipy tqdm packaging transformers peft accelerate \\
        safetensors pyyaml typer huggingface-hub tokenizers matplotlib
    bench/results/venv-laplace/bin/pip install --no-deps -e . laplace-torch==0.3 asdfghjkl==0.1a4 backpack-for-pytorch \\
        curvlinops-for-pytorch torchmetrics opt-einsum einops lightning-utilities unfoldNd einconv linear_operator
    bench/results/venv-laplace/bin/python bench/laplace_vs_laplace_torch.py --model-dir runs/demo/run/model \\
        --data runs/demo/data/train_pairs.jsonl --test runs/demo/data/test_pairs.jsonl
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from laplace import Laplace
from transformers import BatchEncoding

from rewardstack.bayes import fit_laplace
from rewardstack.bayes.predict import reward_moments
from rewardstack.data.encode import encode_pairs
from rewardstack.data.load import load_preferences
from rewardstack.model import RewardModel

from common import agreement, left_padded_rewards, pad_left


class PairLogits(torch.nn.Module):
    """(pairs, 2, tokens) left-padded chosen/rejected → logits (r_chosen, r_rejected)."""

    def __init__(self, model: RewardModel):
        super().__init__()
        self.model = model

    def forward(self, batch) -> torch.Tensor:
        pairs = batch["input_ids"].shape[0]
        return left_padded_rewards(self.model, batch["input_ids"].flatten(0, 1), batch["attention_mask"].flatten(0, 1)).reshape(pairs, 2)


class PairLoader(list):
    """Batches of (BatchEncoding of pairs, label 0 = chosen); laplace-torch reads len(loader.dataset)."""

    def __init__(self, batches, pairs: int):
        super().__init__(batches)
        self.dataset = range(pairs)


def pair_batch(first: list, second: list, pad_id: int) -> BatchEncoding:
    """Sequences first[i] and second[i] side by side, left-padded to one width: (pairs, 2, tokens)."""
    both = pad_left(list(first) + list(second), pad_id)
    n = len(first)
    return BatchEncoding({key: torch.stack([value[:n], value[n:]], dim=1) for key, value in both.items()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", required=True, help="a trained LoRA reward model (bt or haf)")
    parser.add_argument("--data", required=True, help="the pairs to fit on")
    parser.add_argument("--test", required=True, help="pairs whose responses get a variance")
    parser.add_argument("--batch-size", type=int, default=8, help="pairs per fitting batch")
    parser.add_argument("--variance-batch-size", type=int, default=2, help="responses per laplace-torch predictive call")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = RewardModel.from_pretrained(args.model_dir)
    model.posterior = None
    model.eval()
    pairs = encode_pairs(model.encoder, load_preferences(args.data)[0])
    test = encode_pairs(model.encoder, load_preferences(args.test)[0])
    sequences = test.chosen + test.rejected
    print(f"{len(pairs)} fitting pairs, {len(sequences)} held-out responses, LoRA rank {model.config.lora_r}")

    started = time.perf_counter()
    posterior = fit_laplace(model, pairs, subset="lora", batch_size=args.batch_size)
    ours_fit = time.perf_counter() - started
    delta = posterior.prior_precision
    started = time.perf_counter()
    _, ours_var = reward_moments(model, sequences, batch_size=args.batch_size)
    ours_predict = time.perf_counter() - started

    for name, parameter in model.named_parameters():  # laplace-torch's posterior covers the trainable weights
        parameter.requires_grad_("lora_" in name)
    pad = model.tokenizer.pad_token_id
    batches = [list(range(i, min(i + args.batch_size, len(pairs)))) for i in range(0, len(pairs), args.batch_size)]
    loader = PairLoader(
        [(pair_batch([pairs.chosen[i].ids for i in b], [pairs.rejected[i].ids for i in b], pad), torch.zeros(len(b), dtype=torch.long)) for b in batches],
        len(pairs),
    )
    laplace = Laplace(PairLogits(model), "classification", subset_of_weights="all", hessian_structure="kron")
    started = time.perf_counter()
    laplace.fit(loader)
    theirs_fit = time.perf_counter() - started
    laplace.prior_precision = delta
    started = time.perf_counter()
    theirs_var = np.empty(len(sequences))
    for i in range(0, len(sequences), args.variance_batch_size):
        chunk = [s.ids for s in sequences[i : i + args.variance_batch_size]]
        _, covariance = laplace._glm_predictive_distribution(pair_batch(chunk, chunk, pad))
        theirs_var[i : i + len(chunk)] = covariance[:, 0, 0].detach().double().numpy()
    theirs_predict = time.perf_counter() - started

    print(f"prior precision (rewardstack evidence, used by both): {delta:.4g}; laplace-torch backend {type(laplace.backend).__name__}")
    print(f"{'':<16}{'fit s':>8}{'ms/variance':>13}{'median std':>12}")
    for name, fit, predict, var in (("rewardstack", ours_fit, ours_predict, ours_var), ("laplace-torch", theirs_fit, theirs_predict, theirs_var)):
        print(f"{name:<16}{fit:>8.1f}{1000 * predict / len(sequences):>13.1f}{np.median(np.sqrt(np.clip(var, 0, None))):>12.4f}")
    print(f"ratios laplace-torch / rewardstack: fit {theirs_fit / ours_fit:.2f}x, variance {theirs_predict / ours_predict:.2f}x")
    print(agreement(ours_var, theirs_var, "laplace-torch"))


if __name__ == "__main__":
    main()
