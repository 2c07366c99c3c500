"""Scoring across processes under `accelerate launch` (or torchrun): rows are dealt to the processes in
turn (row i to process i mod P, which evens out lengths), each scores its share, and the scores are
gathered back in input order on every process. Launched as one process, a source scores everything
itself. A bandit source draws its choices in each process apart."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from .scores import RewardScores


def processes():
    """accelerate's PartialState when this run was launched as several processes, else None."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.accelerator.is_available())  # without cpu=True a CPU launch counts as one process


def is_main_process() -> bool:
    state = processes()
    return state is None or state.is_main_process


def wait_for_everyone() -> None:
    state = processes()
    if state is not None:
        state.wait_for_everyone()


def score_across_processes(source, prompts: Sequence, responses: Sequence[str], batch_size: int = 16) -> RewardScores:
    """source.score over all rows, shared out among the launched processes; the same on every process."""
    state = processes()
    if state is None:
        return source.score(prompts, responses, batch_size=batch_size)
    from accelerate.utils import gather_object

    mine = list(range(state.process_index, len(prompts), state.num_processes))
    scores = source.score([prompts[i] for i in mine], [responses[i] for i in mine], batch_size=batch_size) if mine else None
    return merge_shards(gather_object([(mine, scores)]), len(prompts))


def merge_shards(shards: Sequence[tuple[list[int], RewardScores | None]], rows: int) -> RewardScores:
    """One RewardScores in row order from (row indices, scores of those rows) per process."""
    filled = [(index, scores) for index, scores in shards if scores is not None]
    if not filled:
        return RewardScores(mean=np.empty(0))

    def assemble(field, dtype):
        out = np.empty(rows, dtype=dtype)
        for index, scores in filled:
            out[index] = field(scores)
        return out

    first = filled[0][1]
    return RewardScores(
        mean=assemble(lambda s: s.mean, np.float64),
        std=None if any(s.std is None for _, s in filled) else assemble(lambda s: s.std, np.float64),
        parts={name: assemble(lambda s, name=name: s.parts[name], np.float64) for name in first.parts},
        arm=None if any(s.arm is None for _, s in filled) else assemble(lambda s: s.arm, np.int64),
        truncated=sum(s.truncated for _, s in filled),
    )
