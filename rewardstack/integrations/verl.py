"""verl's custom reward function: set `custom_reward_function.path` to this file (name `compute_score`)
and the reward in $REWARDSTACK_REWARD (a model folder, Hub id or YAML tree). verl passes the decoded
response (`solution_str`) but not the prompt: each row's `extra_info` must carry it as `prompt` (a
string or chat messages), which the dataset's extra_info column provides. Both of verl's forms work:
one row (`data_source, solution_str, ground_truth, extra_info` → float) and batched (`data_sources,
solution_strs, ground_truths, extra_infos` → list of floats, for its batch reward manager).
"""

from __future__ import annotations

from typing import Any, Sequence

from ..errors import UserError
from .environment import batch_size, reward_spec, source_from_environment


def compute_score(data_source: Any = None, solution_str: str | None = None, ground_truth: Any = None, extra_info: dict | None = None,
                  data_sources: Sequence | None = None, solution_strs: Sequence[str] | None = None, ground_truths: Sequence | None = None,
                  extra_infos: Sequence[dict | None] | None = None, **_: Any) -> float | list[float]:
    """The reward of each response to the prompt in its extra_info."""
    if solution_strs is None:
        return _scores([solution_str], [extra_info])[0]
    return _scores(list(solution_strs), list(extra_infos or [None] * len(solution_strs)))


def _scores(responses: list, infos: list) -> list[float]:
    prompts = []
    for i, info in enumerate(infos):
        prompt = info.get("prompt") if isinstance(info, dict) else None
        if not isinstance(prompt, (str, list, tuple)) or not prompt:
            raise UserError(f"compute_score: row {i}: extra_info has no `prompt` (a string or chat messages); put the prompt there "
                            "in the dataset's extra_info column")
        if not isinstance(responses[i], str):
            raise UserError(f"compute_score: row {i}: solution_str must be text, got {type(responses[i]).__name__}")
        prompts.append(prompt)
    scores = source_from_environment(reward_spec()).score(prompts, responses, batch_size=batch_size())
    return [float(value) for value in scores.mean]
