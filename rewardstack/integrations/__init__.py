"""Adapters for RL frameworks: reward sources as the reward functions their trainers call."""

from .trl import AsyncRewardFunction, RewardFunction

__all__ = ["AsyncRewardFunction", "RewardFunction"]
