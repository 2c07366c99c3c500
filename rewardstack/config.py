"""Dataclass configs, read from a YAML file with command-line overrides on top."""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .data.load import Columns
from .errors import UserError, require
from .model import ModelConfig

LR_SCHEDULERS = ("linear", "cosine", "constant")


@dataclass
class TrainConfig(ModelConfig):
    """Everything a training run needs besides its data paths. Batch sizes count pairs."""

    epochs: int = 1
    batch_size: int = 8  # pairs per optimizer step, summed over all processes
    micro_batch_size: int = 8  # pairs per forward pass on one process (gradient accumulation below that)
    learning_rate: float = 1e-4
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03  # share of the steps with a linear warm-up
    lr_scheduler: str = "linear"  # linear | cosine | constant (after warm-up)
    max_grad_norm: float = 1.0  # 0 disables clipping
    center_rewards_coefficient: float = 0.0  # c in c·(r_c + r_r)²
    reward_weight: float = 1.0  # λ: weight of the Bradley–Terry loss in the haf objective
    policy_weight: float = 0.2  # α: weight of the token-level policy loss in the haf objective
    simpo_gamma: float = 0.5  # γ margin of the simpo policy loss
    ref_cache_dir: str | None = None  # also keep reference log-probabilities on disk here, keyed by model and data
    eval_every: int = 0  # steps between evaluations on --eval-data (0: only at the end)
    save_every: int = 0  # steps between checkpoints (0: none)
    keep_checkpoints: int = 2  # newest checkpoints kept on disk
    eval_batch_size: int = 16  # sequences per forward pass when evaluating
    seed: int = 42
    skip_invalid: bool = False  # count and skip invalid rows instead of stopping at the first
    columns: Columns = field(default_factory=Columns)

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("epochs", "batch_size", "micro_batch_size", "eval_batch_size", "keep_checkpoints"):
            require(self, name, getattr(self, name) >= 1, "at least 1")
        require(self, "learning_rate", 0 < self.learning_rate < math.inf, "a positive number")
        for name in ("weight_decay", "max_grad_norm", "center_rewards_coefficient", "reward_weight", "policy_weight"):
            require(self, name, 0 <= getattr(self, name) < math.inf, "0 or a positive number")
        require(self, "simpo_gamma", math.isfinite(self.simpo_gamma), "a finite number")
        require(self, "warmup_ratio", 0 <= self.warmup_ratio < 1, "in [0, 1)")
        require(self, "lr_scheduler", self.lr_scheduler in LR_SCHEDULERS, f"one of {', '.join(LR_SCHEDULERS)}")
        for name in ("eval_every", "save_every"):
            require(self, name, getattr(self, name) >= 0, "0 (off) or a positive number of steps")


def load_config(cls: type, path: str | Path | None = None, overrides: dict[str, Any] | None = None):
    """`cls` from the YAML file at `path` (if any) with `overrides` (None values ignored) on top."""
    data: dict[str, Any] = {}
    where = "options"
    if path is not None:
        where = str(path)
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise UserError(f"{path}: config file not found") from None
        except yaml.YAMLError as exc:
            raise UserError(f"{path}: invalid YAML ({str(exc).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise UserError(f"{path}: a config file must be a mapping of option: value")
    for key, value in (overrides or {}).items():
        if isinstance(value, dict):
            data[key] = {**data.get(key, {}), **{k: v for k, v in value.items() if v is not None}}
        elif value is not None:
            data[key] = value
    return from_dict(cls, data, where)


def from_dict(cls: type, data: dict[str, Any], where: str):
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    values = {}
    for key, value in data.items():
        if key not in known:
            raise UserError(f"{where}: unknown option {key!r} (known: {', '.join(sorted(known))})")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise UserError(f"{where}: option {key!r} must be a mapping")
            value = from_dict(hint, value, f"{where}: {key}")
        else:
            value = _check_type(value, hint, f"{where}: option {key!r}")
        values[key] = value
    try:
        return cls(**values)
    except UserError as err:  # the dataclass's own checks; say where the values came from
        raise UserError(f"{where}: {err}") from None


def _check_type(value: Any, hint: Any, where: str) -> Any:
    allowed = typing.get_args(hint) or (hint,)
    if value is None and type(None) in allowed:
        return None
    if bool in allowed and isinstance(value, bool):
        return value
    if int in allowed and isinstance(value, int) and not isinstance(value, bool):
        return value
    if float in allowed and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if str in allowed and isinstance(value, str):
        return value
    names = " or ".join(getattr(a, "__name__", str(a)) for a in allowed)
    raise UserError(f"{where} must be {names}, got {value!r}")


def to_dict(config) -> dict[str, Any]:
    return dataclasses.asdict(config)
