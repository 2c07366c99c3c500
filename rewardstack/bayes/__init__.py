"""Bayesian reward models: a Laplace posterior over the LoRA weights and the reward head."""

from .fit import Laplace, fit_laplace
from .posterior import Posterior
from .predict import pair_moments, probit_logit, reward_moments

__all__ = ["Laplace", "Posterior", "fit_laplace", "pair_moments", "probit_logit", "reward_moments"]
