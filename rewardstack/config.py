"""Dataclass configs, read from a YAML file with command-line overrides on top."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .data.load import Columns
from .errors import UserError
from .losses import POLICY_LOSSES
from .model import ModelConfig


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

    def validate(self) -> "TrainConfig":
        positive = ("epochs", "batch_size", "micro_batch_size", "max_length", "eval_batch_size", "keep_checkpoints")
        for name in positive:
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.lr_scheduler not in ("linear", "cosine", "constant"):
            raise UserError(f"lr_scheduler must be linear, cosine or constant, got {self.lr_scheduler!r}")
        if not 0 <= self.warmup_ratio < 1:
            raise UserError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.objective not in ("bt", "haf", "dpo"):
            raise UserError(f"objective must be bt, haf or dpo, got {self.objective!r}")
        if self.policy_loss not in POLICY_LOSSES:
            raise UserError(f"policy_loss must be one of {', '.join(POLICY_LOSSES)}, got {self.policy_loss!r}")
        if self.lora_r < 0:
            raise UserError(f"lora_r must be 0 (full fine-tuning) or positive, got {self.lora_r}")
        return self


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
    config = from_dict(cls, data, where)
    return config.validate() if hasattr(config, "validate") else config


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
    return cls(**values)


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
