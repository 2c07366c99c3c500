"""Reward sources: anything with `score(prompts, responses) -> RewardScores`."""

from __future__ import annotations

from ..scores import RewardScores, RewardSource
from .combine import Ensemble, Hierarchical, Normalized
from .remote import Remote
from .rules import Rule
from .tree import build_source, calibrate_tree, load_source

__all__ = ["RewardScores", "RewardSource", "Rule", "Remote", "Normalized", "Ensemble", "Hierarchical", "build_source", "calibrate_tree", "load_source"]
