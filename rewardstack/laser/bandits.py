"""Contextual bandits that choose among K reward sources (LASeR), and the normaliser of their rewards.

All share `select(x) -> arm`, `update(x, arm, reward)` (reward in [0, 1]) and `state()` / `load_state()`.
- LinUCB(α, λ): per arm A_k = λI + Σ x xᵀ, b_k = Σ r x; θ_k = A_k⁻¹ b_k; pick argmax θ_k·x + α √(xᵀ A_k⁻¹ x).
  A_k⁻¹ is kept directly and updated by Sherman–Morrison, A⁻¹ ← A⁻¹ − (A⁻¹x)(A⁻¹x)ᵀ / (1 + xᵀA⁻¹x), O(d²).
  Ties (fresh arms) are broken at random with the bandit's seed, as in every algorithm here.
- LinearThompson(v, λ): the same statistics; sample θ̃_k ~ N(θ_k, v² A_k⁻¹), pick argmax θ̃_k·x.
- Exp3(γ): context-free; p_k = (1 − γ) w_k / Σw + γ/K, sample; w_a ← w_a · exp(γ r / (K p_a)) (kept as log w).
- EpsilonGreedy(ε): context-free; the arm with the best mean reward, a uniform arm with probability ε.
"""

from __future__ import annotations

import numpy as np

from ..errors import UserError

ALGORITHMS = ("linucb", "thompson", "exp3", "epsilon_greedy")


def argmax_breaking_ties(values: np.ndarray, rng: np.random.Generator) -> int:
    """The index of the largest value; among several equal largest ones, one drawn uniformly by `rng`
    (fresh arms tie, and always taking the first would hand a whole batch to the first member)."""
    best = np.flatnonzero(values == values.max())
    return int(best[0]) if len(best) == 1 else int(rng.choice(best))


class _Linear:
    """Per-arm ridge statistics A_k⁻¹ and b_k over d-dimensional contexts."""

    def __init__(self, arms: int, dim: int, ridge: float, seed: int):
        self.A_inv = np.stack([np.eye(dim) / ridge for _ in range(arms)])
        self.b = np.zeros((arms, dim))
        self.counts = np.zeros(arms, dtype=np.int64)
        self.rng = np.random.default_rng(seed)

    def theta(self) -> np.ndarray:
        return np.einsum("kij,kj->ki", self.A_inv, self.b)

    def update(self, x: np.ndarray, arm: int, reward: float) -> None:
        Ax = self.A_inv[arm] @ x
        self.A_inv[arm] -= np.outer(Ax, Ax) / (1.0 + x @ Ax)
        self.b[arm] += reward * x
        self.counts[arm] += 1

    def state(self) -> dict[str, np.ndarray]:
        return {"A_inv": self.A_inv, "b": self.b, "counts": self.counts}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        if state["A_inv"].shape != self.A_inv.shape:
            raise UserError(f"bandit state: A_inv has shape {state['A_inv'].shape}, this bandit needs {self.A_inv.shape} (arms, dim, dim)")
        self.A_inv, self.b, self.counts = state["A_inv"].copy(), state["b"].copy(), state["counts"].copy()


class LinUCB(_Linear):
    def __init__(self, arms: int, dim: int, alpha: float = 1.0, ridge: float = 1.0, seed: int = 0):
        super().__init__(arms, dim, ridge, seed)
        self.alpha = alpha

    def upper_bounds(self, x: np.ndarray) -> np.ndarray:
        width = np.sqrt(np.maximum(np.einsum("i,kij,j->k", x, self.A_inv, x), 0.0))
        return self.theta() @ x + self.alpha * width

    def select(self, x: np.ndarray) -> int:
        return argmax_breaking_ties(self.upper_bounds(x), self.rng)


class LinearThompson(_Linear):
    def __init__(self, arms: int, dim: int, scale: float = 0.5, ridge: float = 1.0, seed: int = 0):
        super().__init__(arms, dim, ridge, seed)
        self.scale = scale

    def select(self, x: np.ndarray) -> int:
        theta = self.theta()
        sampled = [self.rng.multivariate_normal(theta[k], self.scale**2 * self.A_inv[k], method="cholesky") for k in range(len(theta))]
        return argmax_breaking_ties(np.array(sampled) @ x, self.rng)


class Exp3:
    def __init__(self, arms: int, dim: int = 0, gamma: float = 0.1, seed: int = 0):
        self.gamma, self.log_w = gamma, np.zeros(arms)
        self.counts = np.zeros(arms, dtype=np.int64)
        self.rng = np.random.default_rng(seed)

    def probabilities(self) -> np.ndarray:
        w = np.exp(self.log_w - self.log_w.max())
        return (1 - self.gamma) * w / w.sum() + self.gamma / len(w)

    def select(self, x: np.ndarray | None = None) -> int:
        return int(self.rng.choice(len(self.log_w), p=self.probabilities()))

    def update(self, x: np.ndarray | None, arm: int, reward: float) -> None:
        self.log_w[arm] += self.gamma * reward / (len(self.log_w) * self.probabilities()[arm])
        self.counts[arm] += 1

    def state(self) -> dict[str, np.ndarray]:
        return {"log_w": self.log_w, "counts": self.counts}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        self.log_w, self.counts = state["log_w"].copy(), state["counts"].copy()


class EpsilonGreedy:
    def __init__(self, arms: int, dim: int = 0, epsilon: float = 0.1, seed: int = 0):
        self.epsilon = epsilon
        self.sums, self.counts = np.zeros(arms), np.zeros(arms, dtype=np.int64)
        self.rng = np.random.default_rng(seed)

    def select(self, x: np.ndarray | None = None) -> int:
        if self.rng.random() < self.epsilon:
            return int(self.rng.integers(len(self.counts)))
        means = np.where(self.counts > 0, self.sums / np.maximum(self.counts, 1), np.inf)  # untried arms first
        return argmax_breaking_ties(means, self.rng)

    def update(self, x: np.ndarray | None, arm: int, reward: float) -> None:
        self.sums[arm] += reward
        self.counts[arm] += 1

    def state(self) -> dict[str, np.ndarray]:
        return {"sums": self.sums, "counts": self.counts}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        self.sums, self.counts = state["sums"].copy(), state["counts"].copy()


def make_bandit(algorithm: str, arms: int, dim: int, seed: int = 0, **params: float):
    """A bandit by name; params: alpha (linucb), scale (thompson), gamma (exp3), epsilon (epsilon_greedy), ridge."""
    classes = {"linucb": LinUCB, "thompson": LinearThompson, "exp3": Exp3, "epsilon_greedy": EpsilonGreedy}
    if algorithm not in classes:
        raise UserError(f"bandit: algorithm must be one of {', '.join(ALGORITHMS)}, not {algorithm!r}")
    try:
        return classes[algorithm](arms, dim, seed=seed, **params)
    except TypeError:
        raise UserError(f"bandit {algorithm}: unknown parameter among {', '.join(params)}") from None


class PercentileNormalizer:
    """Bandit rewards from raw feedback: (r − q20)/(q80 − q20) clipped to [0, 1], with q20, q80 the running
    20th/80th percentiles of all feedback so far (this one included); 0.5 while q80 = q20."""

    def __init__(self, low: float = 20.0, high: float = 80.0):
        self.low, self.high, self.history = low, high, np.empty(0)

    def __call__(self, raw: float) -> float:
        self.history = np.append(self.history, float(raw))
        q_low, q_high = np.percentile(self.history, [self.low, self.high])
        if q_high <= q_low:
            return 0.5
        return float(np.clip((raw - q_low) / (q_high - q_low), 0.0, 1.0))
