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

import time

import numpy as np
import torch
from laplace import Laplace
from transformers import BatchEncoding

from rewardstack.model import RewardModel

from common import comparison_arguments, left_padded_rewards, pad_left, print_comparison, rewardstack_lora_laplace


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
    parser = comparison_arguments(__doc__.splitlines()[0])
    parser.add_argument("--variance-batch-size", type=int, default=2, help="responses per laplace-torch predictive call")
    args = parser.parse_args()
    ours = rewardstack_lora_laplace(args)
    model, pairs, sequences = ours.model, ours.pairs, ours.sequences
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
    laplace.prior_precision = ours.prior_precision
    started = time.perf_counter()
    theirs_var = np.empty(len(sequences))
    for i in range(0, len(sequences), args.variance_batch_size):
        chunk = [s.ids for s in sequences[i : i + args.variance_batch_size]]
        _, covariance = laplace._glm_predictive_distribution(pair_batch(chunk, chunk, pad))
        theirs_var[i : i + len(chunk)] = covariance[:, 0, 0].detach().double().numpy()
    theirs_predict = time.perf_counter() - started

    print(f"laplace-torch backend {type(laplace.backend).__name__}")
    print_comparison(ours, "laplace-torch", theirs_fit, theirs_predict, theirs_var)


if __name__ == "__main__":
    main()
