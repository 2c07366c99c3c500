"""OpenRLHF's custom reward function file. Pass this file's path as `--remote_rm_url` and name the reward
in $REWARDSTACK_REWARD (a model folder, Hub id or YAML tree); OpenRLHF then calls
`reward_func(queries, prompts, labels)` with the full texts (prompt and response rendered by the chat
template) and their prompts, and gets back {"rewards", "scores", "extra_logs"} as tensors. The texts are
split into messages and response by the first reward model's chat template (or at their prompt).

    python -c "import rewardstack.integrations.openrlhf as f; print(f.__file__)"   # the path to pass
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import torch

from ..errors import UserError
from .environment import batch_size, reward_spec, source_from_environment


@lru_cache(maxsize=None)
def _loaded(spec: str):
    """The reward source named by `spec` and a splitter of its first model's chat template (loaded once)."""
    from ..server.conversation import ConversationSplitter
    from ..sources.tree import reward_models

    source = source_from_environment(spec)
    models = reward_models(source)
    return source, ConversationSplitter(models[0].encoder) if models else None


def reward_func(queries: Sequence[str], prompts: Sequence[str], labels: Sequence | None = None) -> dict:
    """Rewards of OpenRLHF's rollouts: `rewards` and `scores` (the same, float32), and in `extra_logs` the
    parts of a composite source and, with a posterior, `reward_std`."""
    from ..server.conversation import split_texts

    source, splitter = _loaded(reward_spec())
    try:
        messages, responses = split_texts(splitter, list(queries), list(prompts), "queries")
    except ValueError as err:
        raise UserError(f"reward_func: {err}") from None
    scores = source.score(messages, responses, batch_size=batch_size())
    rewards = torch.tensor(scores.mean, dtype=torch.float32)
    extra = {name: torch.tensor(values, dtype=torch.float32) for name, values in scores.parts.items()}
    if scores.std is not None:
        extra["reward_std"] = torch.tensor(scores.std, dtype=torch.float32)
    return {"rewards": rewards, "scores": rewards, "extra_logs": extra}
