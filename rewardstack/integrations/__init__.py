"""Adapters for RL frameworks: reward sources as the reward functions their trainers call."""

from .trl import RewardFunction

__all__ = ["RewardFunction"]
