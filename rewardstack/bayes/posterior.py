"""The Laplace posterior over the posterior layers' weights: Kronecker-factored, in eigenbases.

For a layer with weight W (out × in) the Gauss–Newton block is approximated as G ⊗ A, with eigendecompositions
G = U_G diag(γ) U_Gᵀ and A = U_A diag(α) U_Aᵀ. With prior N(0, δ⁻¹I) the posterior covariance of vec(W) is
(U_G ⊗ U_A) diag(1 / (γ_i α_j + δ)) (U_G ⊗ U_A)ᵀ, so for a Jacobian J (out × in) of any scalar output,
Var = Σ_ij (U_Gᵀ J U_A)²_ij / (γ_i α_j + δ).

A large factor keeps only its top k eigenpairs (vectors U, values λ) and puts the mean of the remaining
eigenvalues, `rest`, on the orthogonal complement of U; its trace is kept exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from ..errors import UserError
from ..files import atomic_path, load_tensors, read_json, write_json

POSTERIOR_FILE = "posterior.safetensors"
POSTERIOR_META = "posterior.json"
FORMAT_VERSION = 1
PRIOR_GRID = np.logspace(-4, 4, 33)  # prior precisions δ of the evidence and validation curves


@dataclass
class Eigen:
    """A symmetric PSD factor ≈ U diag(values) Uᵀ + rest · (I − U Uᵀ), U: (dim, k) orthonormal columns."""

    vectors: torch.Tensor
    values: torch.Tensor
    rest: float = 0.0

    @property
    def dim(self) -> int:
        return self.vectors.shape[0]

    @property
    def complement(self) -> int:
        """Dimension of the complement of span(U) (0 for a full factor)."""
        return self.vectors.shape[0] - self.vectors.shape[1]

    @classmethod
    def of(cls, matrix: torch.Tensor) -> "Eigen":
        """Eigendecomposition of a dense symmetric PSD matrix (rounding's negative eigenvalues set to 0)."""
        values, vectors = torch.linalg.eigh(matrix.double())
        return cls(vectors.float(), values.clamp_min(0.0).float())

    def memory_bytes(self) -> int:
        return self.vectors.numel() * self.vectors.element_size() + self.values.numel() * self.values.element_size()


@dataclass
class Block:
    """One layer's factors: Gauss–Newton ≈ out ⊗ inp for its weight (out × in), row-major."""

    name: str
    out: Eigen
    inp: Eigen

    @property
    def size(self) -> int:
        return self.out.dim * self.inp.dim

    def eigenvalue_groups(self) -> list[tuple[torch.Tensor, int]]:
        """Eigenvalues of out ⊗ inp as (values, multiplicity) groups, complements included."""
        groups = [(torch.outer(self.out.values, self.inp.values).flatten(), 1)]
        if self.inp.complement:
            groups.append((self.out.values * self.inp.rest, self.inp.complement))
        if self.out.complement:
            groups.append((self.inp.values * self.out.rest, self.out.complement))
        if self.out.complement and self.inp.complement:
            groups.append((torch.tensor([self.out.rest * self.inp.rest]), self.out.complement * self.inp.complement))
        return groups

    def variances(self, jacobians: torch.Tensor, prior_precisions: torch.Tensor) -> torch.Tensor:
        """Var of each output whose Jacobian is jacobians[q] (out × in), for each prior precision δ:
        shape (outputs, len(δ)). Σ_ij (U_Gᵀ J U_A)²_ij / (γ_i α_j + δ), plus the complement terms."""
        j = jacobians.float()  # rotations in float32 (the bulk of the work), sums of squares in float64
        uo, ui = self.out.vectors.float(), self.inp.vectors.float()
        d = prior_precisions.double().to(j.device)[:, None]
        rotated_out = torch.einsum("ok,qoi->qki", uo, j)  # U_Gᵀ J
        sq = torch.einsum("qki,il->qkl", rotated_out, ui).double().square()  # (U_Gᵀ J U_A)²
        products = torch.outer(self.out.values.double(), self.inp.values.double()).flatten()
        var = sq.flatten(1) @ (1.0 / (products[None] + d)).T
        if self.inp.complement:  # rows of U_Gᵀ J outside span(U_A)
            row_rest = (rotated_out.double().square().sum(2) - sq.sum(2)).clamp_min(0.0)
            var += row_rest @ (1.0 / (self.out.values.double()[None] * self.inp.rest + d)).T
        if self.out.complement:  # columns of J U_A outside span(U_G)
            col_rest = (torch.einsum("qoi,il->qol", j, ui).double().square().sum(1) - sq.sum(1)).clamp_min(0.0)
            var += col_rest @ (1.0 / (self.inp.values.double()[None] * self.out.rest + d)).T
        if self.out.complement and self.inp.complement:
            both = j.double().square().sum((1, 2)) - rotated_out.double().square().sum((1, 2))
            both -= torch.einsum("qoi,il->qol", j, ui).double().square().sum((1, 2)) - sq.sum((1, 2))
            var += both.clamp_min(0.0)[:, None] / (self.out.rest * self.inp.rest + d.T)
        return var


@dataclass
class Posterior:
    """Laplace posterior N(θ*, (GGN + δI)⁻¹) over the posterior layers' weights θ (MAP θ*).

    log_likelihood: Σ_n log σ(Δ_n) over the fitting pairs at θ*; mean_sq_norm: ‖θ*‖²."""

    subset: str
    blocks: list[Block]
    log_likelihood: float
    mean_sq_norm: float
    prior_precision: float = 1.0
    info: dict = field(default_factory=dict)  # how it was fitted: data, pairs, prior method, curves, times

    @property
    def n_params(self) -> int:
        return sum(b.size for b in self.blocks)

    def to(self, device) -> "Posterior":
        """The factors moved to `device` (in place)."""
        for block in self.blocks:
            for factor in (block.out, block.inp):
                factor.vectors, factor.values = factor.vectors.to(device), factor.values.to(device)
        return self

    def log_marginal_likelihood(self, prior_precision: float) -> float:
        """log p(D) ≈ log p(D|θ*) − ½δ‖θ*‖² + (P/2) log δ − ½ Σ log(λ_k + δ), the λ_k the GGN's eigenvalues
        (the 2π terms cancel)."""
        d = float(prior_precision)
        logdet = 0.0
        for block in self.blocks:
            for values, multiplicity in block.eigenvalue_groups():
                logdet += multiplicity * float(torch.log(values.double() + d).sum())
        return self.log_likelihood - 0.5 * d * self.mean_sq_norm + 0.5 * self.n_params * math.log(d) - 0.5 * logdet

    def optimize_prior_precision(self) -> tuple[float, list[tuple[float, float]]]:
        """δ maximising the log marginal likelihood: the best point of PRIOR_GRID (10⁻⁴…10⁴, the evidence
        curve), refined by golden-section search in log δ between its neighbours. The evidence has one
        maximum: 2δ times its derivative, Σ_k λ_k / (λ_k + δ) − δ‖θ*‖², decreases in δ, so the best grid
        point's neighbours bracket it."""
        grid = PRIOR_GRID
        curve = [(float(d), self.log_marginal_likelihood(d)) for d in grid]
        best = int(np.argmax([v for _, v in curve]))
        lo, hi = math.log(grid[max(best - 1, 0)]), math.log(grid[min(best + 1, len(grid) - 1)])
        log_delta = golden_section_minimum(lambda x: -self.log_marginal_likelihood(math.exp(x)), lo, hi)
        return math.exp(log_delta), curve

    def memory_bytes(self) -> int:
        return sum(b.out.memory_bytes() + b.inp.memory_bytes() for b in self.blocks)

    def save(self, directory: str | Path) -> None:
        """posterior.safetensors (eigenvectors and eigenvalues) and posterior.json (the rest)."""
        directory = Path(directory)
        tensors, blocks = {}, []
        for i, block in enumerate(self.blocks):
            for side, eigen in (("out", block.out), ("in", block.inp)):  # copies: blocks may share a factor
                tensors[f"{i}.{side}.vectors"] = eigen.vectors.cpu().contiguous().clone()
                tensors[f"{i}.{side}.values"] = eigen.values.cpu().contiguous().clone()
            blocks.append({"name": block.name, "out_rest": block.out.rest, "in_rest": block.inp.rest})
        with atomic_path(directory / POSTERIOR_FILE) as temporary:
            save_file(tensors, temporary)
        meta = {
            "format_version": FORMAT_VERSION, "subset": self.subset, "prior_precision": self.prior_precision,
            "log_likelihood": self.log_likelihood, "mean_sq_norm": self.mean_sq_norm, "blocks": blocks, "info": self.info,
        }
        write_json(directory / POSTERIOR_META, meta)

    @classmethod
    def load(cls, directory: str | Path) -> "Posterior | None":
        """The posterior saved in a model directory, or None when it has none."""
        directory = Path(directory)
        if not (directory / POSTERIOR_META).exists():
            return None
        meta = read_json(directory / POSTERIOR_META)
        if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
            raise UserError(f"{directory / POSTERIOR_META}: unknown posterior format")
        tensors = load_tensors(directory / POSTERIOR_FILE)
        blocks = [
            Block(
                b["name"],
                Eigen(tensors[f"{i}.out.vectors"], tensors[f"{i}.out.values"], b["out_rest"]),
                Eigen(tensors[f"{i}.in.vectors"], tensors[f"{i}.in.values"], b["in_rest"]),
            )
            for i, b in enumerate(meta["blocks"])
        ]
        return cls(meta["subset"], blocks, meta["log_likelihood"], meta["mean_sq_norm"], meta["prior_precision"], meta["info"])


def golden_section_minimum(f, lo: float, hi: float, iterations: int = 40) -> float:
    """Minimiser of a unimodal f on [lo, hi] by golden-section search."""
    ratio = (math.sqrt(5) - 1) / 2
    a, b = lo, hi
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = f(c), f(d)
    for _ in range(iterations):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = f(d)
    return (a + b) / 2
