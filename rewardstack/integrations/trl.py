"""A reward source as a reward function for TRL's GRPOTrainer (`reward_funcs=[RewardFunction(...)]`).

TRL calls `f(prompts=..., completions=..., **columns)` with one entry per completion and expects one float
per completion, or None where the function has no reward for it. Prompts and completions are strings
(standard format) or message lists (conversational: the prompt's turns; the completion's assistant turn).
"""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any, Sequence

from ..errors import UserError


class RewardFunction:
    """`source`: a reward source object, a model folder or Hub id, a YAML tree, or the URL of a rewardstack
    server (http[s]://…, with `api_key`). Rows whose completion has no assistant text get None."""

    def __init__(self, source: Any, batch_size: int = 16, api_key: str | None = None, allowed_modules: Sequence[str] = (), name: str = "rewardstack"):
        from ..sources import Remote, load_source

        if isinstance(source, str) and source.startswith(("http://", "https://")):
            source = Remote(source, api_key=api_key)
        elif isinstance(source, (str, Path)):
            source = load_source(source, allowed_modules)
        if not hasattr(source, "score"):
            raise UserError(f"RewardFunction: {type(source).__name__} is not a reward source (it has no score method)")
        self.source, self.batch_size = source, batch_size
        self.__name__ = name  # TRL names the reward's metrics after it

    def __call__(self, prompts: Sequence, completions: Sequence, **columns: Any) -> list[float | None]:
        if len(prompts) != len(completions):
            raise UserError(f"RewardFunction: {len(prompts)} prompts but {len(completions)} completions")
        texts = [completion_text(c) for c in completions]
        rows = [i for i, text in enumerate(texts) if text is not None]
        rewards: list[float | None] = [None] * len(texts)
        if rows:
            scores = self.source.score([prompts[i] for i in rows], [texts[i] for i in rows], batch_size=self.batch_size).mean
            for i, value in zip(rows, scores):
                rewards[i] = float(value) if math.isfinite(value) else None
        return rewards


class AsyncRewardFunction(RewardFunction):
    """RewardFunction with an async __call__ that scores in a worker thread: TRL awaits its async reward
    functions together, so several remote sources (servers, vLLM) are asked at the same time."""

    async def __call__(self, prompts: Sequence, completions: Sequence, **columns: Any) -> list[float | None]:
        return await asyncio.to_thread(RewardFunction.__call__, self, prompts, completions, **columns)


def completion_text(completion: Any) -> str | None:
    """The response text of a completion: the string itself, or the content of its assistant messages;
    None when there is none."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, (list, tuple)):
        parts = [m.get("content") for m in completion if isinstance(m, dict) and m.get("role") == "assistant" and isinstance(m.get("content"), str)]
        return "".join(parts) if parts else None
    return None
