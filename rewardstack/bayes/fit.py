"""Fitting the Laplace posterior of a trained reward model on preference pairs.

Likelihood: Bradley–Terry, −log σ(Δ) with Δ = r_c − r_r. Its generalised Gauss–Newton is
Σ_n λ_n J_Δ,nᵀ J_Δ,n with λ_n = p_n(1 − p_n), p_n = σ(Δ_n), and J_Δ the Jacobian of Δ (chosen minus
rejected, so what the two responses share cancels). Backpropagating Σ_n √λ_n Δ_n gives every layer the
output gradients g of √λ_n Δ_n in one pass.

Per layer, with J_Δ = Σ_k g_k a_kᵀ over the token positions k of the pair:
- one output (the reward head): the exact block, G = 1 and A = Σ_n j_n j_nᵀ with j_n = Σ_k g_k a_k;
- otherwise K-FAC over tokens: the cross terms between positions are dropped and
  Σ_k (g_k g_kᵀ) ⊗ (a_k a_kᵀ) ≈ G ⊗ A with G = Σ_k g_k g_kᵀ and A = Σ_k a_k a_kᵀ / K (K = positions).
  The positions of a pair are its packed tokens (rewardstack.packing): the token prefix both sequences
  share (the prompt, and more where the responses begin alike) once, with g = g_chosen + g_rejected (the
  activations there are the same in both), then each response's own tokens.
A side longer than `max_factor_size` is accumulated as a Nyström sketch plus its exact diagonal (memory
O(side·rank)) and kept as its top `factor_rank` eigenpairs plus the mean of the rest.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from ..config import LaplaceConfig
from ..data.encode import EncodedPairs, encode_pairs
from ..data.load import Columns, load_preferences
from ..errors import UserError
from ..packing import pack_pairs
from .posterior import Block, Eigen, Posterior
from .taps import posterior_layers, record


class FactorSum:
    """Running Σ x xᵀ over rows x of length `dim`: dense, or for dim > max_dense a Nyström sketch
    Y = (Σ x xᵀ) Ω with a fixed Gaussian Ω of 2·rank columns, plus the exact diagonal. Both are linear in
    the rows, so sums over batches and processes are exact and order-free; memory O(dim · rank)."""

    def __init__(self, dim: int, max_dense: int, rank: int, device: torch.device):
        self.dim, self.rank = dim, rank
        self.dense = dim <= max_dense
        if self.dense:
            self.sum = torch.zeros(dim, dim, device=device)
        else:
            generator = torch.Generator().manual_seed(dim)  # the same Ω on every process
            self.test = torch.randn(dim, min(2 * rank, dim), generator=generator).to(device)
            self.sum = torch.zeros(dim, self.test.shape[1], device=device)
            self.diagonal = torch.zeros(dim, device=device)

    def add(self, rows: torch.Tensor) -> None:
        rows = rows.float()
        if self.dense:
            self.sum += rows.T @ rows
        else:
            self.sum += rows.T @ (rows @ self.test)
            self.diagonal += rows.square().sum(0)

    def all_reduce(self, accelerator: Accelerator) -> None:
        if accelerator.num_processes > 1:
            self.sum = accelerator.reduce(self.sum, reduction="sum")
            if not self.dense:
                self.diagonal = accelerator.reduce(self.diagonal, reduction="sum")

    def eigen(self, scale: float) -> Eigen:
        """Eigendecomposition of scale · Σ x xᵀ; for a sketch its top `rank` eigenpairs by the stabilised
        Nyström approximation Y (ΩᵀY)⁺ Yᵀ, and the rest of the trace spread evenly over the other directions."""
        if self.dense:
            return Eigen.of(scale * self.sum.cpu())
        y, test = self.sum.cpu().double(), self.test.cpu().double()
        core_values, core_vectors = torch.linalg.eigh((test.T @ y + y.T @ test) / 2)  # Ωᵀ (Σ x xᵀ) Ω
        kept = core_values > max(float(core_values.max()), 0.0) * self.dim * torch.finfo(torch.float32).eps
        top = torch.zeros(self.dim, 0, dtype=torch.float64)
        if kept.any():
            factor = y @ core_vectors[:, kept] / core_values[kept].sqrt()  # F Fᵀ = Y (ΩᵀY)⁺ Yᵀ
            top, s, _ = torch.linalg.svd(factor, full_matrices=False)
            top, s = top[:, : self.rank], s[: self.rank]
        n = top.shape[1]
        rest = max(float(self.diagonal.sum()) - float(s.square().sum() if n else 0.0), 0.0) / (self.dim - n)
        values = torch.cat([s.square() if n else torch.zeros(0, dtype=torch.float64), torch.full((self.rank - n,), rest, dtype=torch.float64)])
        vectors = torch.linalg.qr(torch.cat([top, test], dim=1))[0][:, : self.rank]  # fewer than rank found: filled up
        return Eigen(vectors.float(), (scale * values).float(), scale * rest)


class _KfacStatistics:
    """Accumulates the factors of every posterior layer from batches of pairs (see the module docstring)."""

    def __init__(self, layers: dict[str, torch.nn.Linear], max_factor_size: int, factor_rank: int, device):
        self.inputs, self.outputs, self.positions = {}, {}, {}
        for name, layer in layers.items():
            out_dim, in_dim = layer.weight.shape
            self.inputs[name] = FactorSum(in_dim, max_factor_size, factor_rank, device)
            self.outputs[name] = None if out_dim == 1 else FactorSum(out_dim, max_factor_size, factor_rank, device)
            self.positions[name] = torch.zeros((), device=device)
        self.real = torch.zeros(0, dtype=torch.bool)  # (rows, T): the batch's tokens that are not padding

    def on_gradient(self, name: str, a: torch.Tensor, g: torch.Tensor) -> None:
        if self.outputs[name] is None:  # exact block: j = Σ_k g_k a_k per sequence (chosen, then rejected), summed over the pair
            j = torch.einsum("sto,sti->si", g, a)
            n = len(j) // 2
            self.inputs[name].add(j[:n] + j[n:])
            return
        keep = self.real
        self.inputs[name].add(a[keep])
        self.outputs[name].add(g[keep])
        self.positions[name] += keep.sum()

    def all_reduce(self, accelerator: Accelerator) -> None:
        for name in self.inputs:
            self.inputs[name].all_reduce(accelerator)
            if self.outputs[name] is not None:
                self.outputs[name].all_reduce(accelerator)
                self.positions[name] = accelerator.reduce(self.positions[name], reduction="sum")

    def blocks(self) -> list[Block]:
        one = Eigen(torch.ones(1, 1), torch.ones(1))
        blocks = []
        for name, inputs in self.inputs.items():
            if self.outputs[name] is None:
                blocks.append(Block(name, one, inputs.eigen(1.0)))
            else:
                blocks.append(Block(name, self.outputs[name].eigen(1.0), inputs.eigen(1.0 / float(self.positions[name]))))
        return blocks


class Laplace:
    """A Laplace posterior over a trained reward model's LoRA weights and/or head, in the style of
    laplace-torch:

        la = Laplace(model, subset="all")
        la.fit(train_data)                                   # K-FAC curvature; prior by evidence
        la.optimize_prior_precision(method="val", val_data=held_out)   # optional
        model.score(prompts, responses).std                  # rewards now carry a std

    `subset`: all | head | lora. Data is anything `load_preferences` reads (a path, a dataset name, a
    datasets.Dataset, a DataFrame, a list of rows, a Mixture) or already encoded pairs. Under
    `accelerate launch` every process runs it on its share of the pairs and the factors are summed."""

    def __init__(self, model, subset: str = "all", batch_size: int = 8, max_factor_size: int = 1024, factor_rank: int = 128,
                 columns: Columns | None = None, skip_invalid: bool = False):
        self.model, self.subset, self.batch_size = model, subset, batch_size
        self.max_factor_size, self.factor_rank = max_factor_size, factor_rank
        self.columns, self.skip_invalid = columns, skip_invalid
        self.layers = posterior_layers(model, subset)  # checks `subset` against the model before any data is read
        self.posterior: Posterior | None = None

    def fit(self, data) -> "Laplace":
        """Accumulate the K-FAC curvature of the Bradley–Terry likelihood on `data`, set the prior
        precision by marginal likelihood, and attach the posterior as `model.posterior`."""
        started = time.perf_counter()
        from ..training import float32_accelerator

        accelerator = float32_accelerator(self.model.compute)  # on the device the model is set to use
        pairs, info = _encoded(self.model, data, self.columns, self.skip_invalid)
        if len(pairs) == 0:
            raise UserError("laplace: no pairs to fit on")
        stats, log_likelihood = self._curvature(pairs, accelerator)
        mean_sq_norm = float(sum(layer.weight.detach().double().square().sum() for layer in self.layers.values()))
        posterior = Posterior(self.subset, stats.blocks(), log_likelihood, mean_sq_norm)
        delta, curve = posterior.optimize_prior_precision()
        posterior.prior_precision = delta
        info.update(prior_method="evidence", evidence_curve=curve, evidence_prior_precision=delta,
                    max_factor_size=self.max_factor_size, factor_rank=self.factor_rank, fit_seconds=time.perf_counter() - started)
        posterior.info = info
        self.posterior = self.model.posterior = posterior
        return self

    def _curvature(self, pairs: EncodedPairs, accelerator: Accelerator) -> tuple[_KfacStatistics, float]:
        """K-FAC factors of the generalised Gauss–Newton, Σ p(1−p)·∇Δ∇Δᵀ with Δ = r_c − r_r, summed over
        the processes, and the log-likelihood Σ log σ(Δ)."""
        model = self.model.to(accelerator.device).eval()
        stats = _KfacStatistics(self.layers, self.max_factor_size, self.factor_rank, accelerator.device)
        log_likelihood = torch.zeros((), dtype=torch.float64, device=accelerator.device)
        order = sorted(range(len(pairs)), key=lambda i: -pairs.tokens(i))
        size = self.batch_size
        batches = [order[i : i + size] for i in range(0, len(order), size)][accelerator.process_index :: accelerator.num_processes]
        with record(model, self.layers, stats.on_gradient) as backward, model.autocast():
            for batch in tqdm(batches, desc="laplace", disable=not accelerator.is_main_process or len(batches) < 5):
                packed = pack_pairs(pairs, batch, model.tokenizer.pad_token_id, model.compute.pack_tokens).to(accelerator.device)
                stats.real = packed.segment >= 0
                rewards = model(packed)
                delta = rewards[: len(batch)] - rewards[len(batch) :]
                p = torch.sigmoid(delta.detach())
                log_likelihood += torch.nn.functional.logsigmoid(delta.detach()).double().sum()
                backward((torch.sqrt(p * (1 - p)) * delta).sum())
        stats.all_reduce(accelerator)
        if accelerator.num_processes > 1:
            log_likelihood = accelerator.reduce(log_likelihood, reduction="sum")
        return stats, float(log_likelihood)

    def optimize_prior_precision(self, method: str = "evidence", val_data=None) -> float:
        """Choose the prior precision δ: `evidence` maximises the marginal likelihood (what `fit` did);
        `val` minimises the Laplace predictive's NLL on `val_data` over the evidence curve's grid.
        Returns δ, also set on the posterior."""
        if self.posterior is None:
            raise UserError("laplace: call fit(data) before optimize_prior_precision")
        if method not in ("evidence", "val"):
            raise UserError(f"laplace: prior must be 'evidence' or 'val', not {method!r}")
        info = self.posterior.info
        info["prior_method"] = method
        if method == "evidence":
            self.posterior.prior_precision = info["evidence_prior_precision"]
            info.pop("val_nll_curve", None)
            return self.posterior.prior_precision
        if val_data is None:
            raise UserError("laplace: --prior val needs --val-data")
        from .predict import validation_nll_curve

        val_pairs, val_info = _encoded(self.model, val_data, self.columns, self.skip_invalid)
        grid, nll = validation_nll_curve(self.model, val_pairs, self.batch_size)
        self.posterior.prior_precision = float(grid[int(np.argmin(nll))])
        info.update(val_nll_curve=[(float(d), float(v)) for d, v in zip(grid, nll)], val_data=val_info)
        return self.posterior.prior_precision


def fit_laplace(model, data, config: LaplaceConfig | None = None, val_data=None) -> Posterior:
    """`Laplace(...).fit(data)` then `optimize_prior_precision(config.prior, val_data)` in one call, as
    `rewardstack laplace` runs it; returns the posterior (also attached as `model.posterior`)."""
    config = config or LaplaceConfig()
    if config.prior == "val" and val_data is None:
        raise UserError("laplace: --prior val needs --val-data")
    laplace = Laplace(model, config.subset, config.batch_size, config.max_factor_size, config.factor_rank, config.columns, config.skip_invalid)
    laplace.fit(data).optimize_prior_precision(config.prior, val_data)
    return laplace.posterior


def _encoded(model, data, columns, skip_invalid) -> tuple[EncodedPairs, dict[str, Any]]:
    if isinstance(data, EncodedPairs):
        return data, {"pairs": len(data), "truncated": data.truncated}
    pairs, report = load_preferences(data, columns, skip_invalid)
    encoded = encode_pairs(model.encoder, pairs)
    return encoded, {"data": report.source, "pairs": len(encoded), "truncated": encoded.truncated, "skipped": dict(report.skipped)}
