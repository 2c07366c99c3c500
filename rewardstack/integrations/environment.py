"""The reward a framework-loaded reward function scores with, named by environment variables (the
frameworks load such functions from a file path and pass no arguments of ours)."""

from __future__ import annotations

import os
from functools import lru_cache

from ..errors import UserError

REWARD_VARIABLE = "REWARDSTACK_REWARD"  # a model folder, Hub id or YAML tree
BATCH_VARIABLE = "REWARDSTACK_BATCH_SIZE"  # sequences per forward pass (default 16)


def reward_spec() -> str:
    spec = os.environ.get(REWARD_VARIABLE)
    if not spec:
        raise UserError(f"set ${REWARD_VARIABLE} to the reward model folder, Hub id or YAML tree this reward function scores with")
    return spec


def batch_size() -> int:
    return int(os.environ.get(BATCH_VARIABLE, "16"))


@lru_cache(maxsize=None)
def source_from_environment(spec: str):
    """The reward source `spec` names, loaded once per process."""
    from ..sources import load_source

    if spec.startswith(("http://", "https://")):
        raise UserError(f"${REWARD_VARIABLE} is a URL: point the framework at the server itself ({spec.rstrip('/')}/get_reward for "
                        "OpenRLHF, /classify for verl) instead of this file")
    return load_source(spec)
