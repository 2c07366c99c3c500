"""Scoring across processes under `accelerate launch` (or torchrun): rows are dealt to the processes in
turn (row i to process i mod P, which evens out lengths), each scores its share, and the scores are
gathered back in input order on every process. Launched as one process, a source scores everything
itself. A bandit source draws its choices in each process apart."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np
import torch

from .scores import RewardScores


def processes():
    """accelerate's PartialState when this run was launched as several processes, else None."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from accelerate import PartialState

    return PartialState(cpu=not torch.accelerator.is_available())  # without cpu=True a CPU launch counts as one process


def cpu_accelerator(**options):
    """An Accelerator for processes on CPU. accelerate runs FSDP and DeepSpeed on accelerators only: CPU
    processes launched with either configuration would silently run plain DDP. Both run on CPU over gloo,
    so switch them on as accelerate does on GPUs: DeepSpeed (its CPU accelerator) in a gloo process group,
    FSDP2 with the launch's FSDP_* settings."""
    from accelerate import Accelerator, PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    def launched_with(kind: str) -> bool:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1 and os.environ.get(f"ACCELERATE_USE_{kind}", "false").lower() == "true"

    if launched_with("DEEPSPEED"):
        PartialState(backend="gloo")
        return Accelerator(**options)
    accelerator = Accelerator(cpu=True, **options)
    if launched_with("FSDP") and accelerator.distributed_type == DistributedType.MULTI_CPU:
        accelerator.state.fsdp_plugin = FullyShardedDataParallelPlugin()
        for shared in (accelerator.state, PartialState()):  # accelerate's state copies the partial state's type when read again
            shared.distributed_type = DistributedType.FSDP
    return accelerator


def is_main_process() -> bool:
    state = processes()
    return state is None or state.is_main_process


def wait_for_everyone() -> None:
    state = processes()
    if state is not None:
        state.wait_for_everyone()


def end_processes() -> None:
    """Wait for every launched process, then close the process group: a process that exits while gloo's
    threads still run aborts ("terminate called without an active exception")."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def arrays_across_processes(rows: int, compute: Callable[[list[int]], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """`compute(indices)` gives per-row arrays of some rows; run on this process's share of `rows` rows,
    and the shares of all processes assembled in row order, the same on every process."""
    if processes() is None or rows == 0:
        return compute(list(range(rows)))
    filled = _shares(rows, compute)
    return {key: _assemble(filled, rows, lambda arrays, key=key: arrays[key]) for key in filled[0][1]}


def score_across_processes(source, prompts: Sequence, responses: Sequence[str], batch_size: int = 16) -> RewardScores:
    """source.score over all rows, shared out among the launched processes; the same on every process."""
    if processes() is None:
        return source.score(prompts, responses, batch_size=batch_size)
    shares = _shares(len(prompts), lambda mine: source.score([prompts[i] for i in mine], [responses[i] for i in mine], batch_size=batch_size))
    return merge_shards(shares, len(prompts))


def _shares(rows: int, compute: Callable[[list[int]], object]) -> list[tuple[list[int], object]]:
    """(row indices, compute(indices)) for every process's share of `rows` rows (row i to process
    i mod P), gathered on every process; shares without rows are left out."""
    from accelerate.utils import gather_object

    state = processes()
    mine = list(range(state.process_index, rows, state.num_processes))
    return [(index, result) for index, result in gather_object([(mine, compute(mine) if mine else None)]) if result is not None]


def merge_shards(shards: Sequence[tuple[list[int], RewardScores | None]], rows: int) -> RewardScores:
    """One RewardScores in row order from (row indices, scores of those rows) per process."""
    filled = [(index, scores) for index, scores in shards if scores is not None]
    if not filled:
        return RewardScores(mean=np.empty(0))
    first = filled[0][1]
    return RewardScores(
        mean=_assemble(filled, rows, lambda s: s.mean),
        std=None if any(s.std is None for _, s in filled) else _assemble(filled, rows, lambda s: s.std),
        parts={name: _assemble(filled, rows, lambda s, name=name: s.parts[name]) for name in first.parts},
        arm=None if any(s.arm is None for _, s in filled) else _assemble(filled, rows, lambda s: s.arm),
        truncated=sum(s.truncated for _, s in filled),
    )


def _assemble(filled: Sequence[tuple[list[int], object]], rows: int, field: Callable) -> np.ndarray:
    """One array of `rows` rows from the `field` of each (row indices, result) share."""
    first = np.asarray(field(filled[0][1]))
    out = np.empty((rows, *first.shape[1:]), dtype=first.dtype)
    for index, result in filled:
        out[index] = field(result)
    return out
