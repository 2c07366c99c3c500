"""Dataclass configs, read from a YAML file with command-line overrides on top."""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import re
import sys
import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from .data.encode import MIN_MAX_LENGTH
from .data.load import Columns
from .errors import UserError, require
from .losses import POLICY_LOSSES
from .options import option
from .packing import ATTENTION_IMPLEMENTATIONS

OBJECTIVES = ("bt", "haf", "dpo")
LR_SCHEDULERS = ("linear", "cosine", "constant")
TRACKERS = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "comet_ml": "comet_ml", "aim": "aim",
            "clearml": "clearml", "dvclive": "dvclive", "swanlab": "swanlab", "trackio": "trackio"}  # report_to name → package


DEVICE_PATTERN = re.compile(r"auto|cpu(:\d+)?|cuda(:\d+)?|mps(:\d+)?")


@dataclass
class ComputeConfig:
    """Where and how forward passes run; the same results whatever is chosen (within float error)."""

    device: str = option("auto", "auto (cuda when available, else cpu), cpu, cuda, cuda:N or mps")
    attn_implementation: str = option("sdpa", "Attention kernel with the packed block mask: sdpa, eager or flex_attention")
    share_prompts: bool = option(True, "Run a prompt shared by several responses (a pair, a pool) once")
    pack_tokens: int = option(0, "Pack several prompt groups into rows of up to this many tokens (padding-free); 0: a row each")
    bf16: bool = option(False, "Compute under bfloat16 autocast (weights, reward head and losses stay float32); for GPUs, "
                               "slow on most CPUs")

    def __post_init__(self) -> None:
        require(self, "device", DEVICE_PATTERN.fullmatch(self.device) is not None, "auto, cpu, cuda, cuda:N or mps")
        require(self, "attn_implementation", self.attn_implementation in ATTENTION_IMPLEMENTATIONS,
                f"one of {', '.join(ATTENTION_IMPLEMENTATIONS)}")
        require(self, "pack_tokens", self.pack_tokens >= 0, "0 (a row per prompt group) or a number of tokens")


@dataclass
class ModelConfig:
    """What a reward model is: its backbone, how it reads text, and its adapter."""

    model: str = option("smollm2-135m", "Backbone: smollm2-135m, tiny-random, a local path or Hugging Face id")
    max_length: int = option(512, "Max tokens of prompt + response; longer pairs are truncated and counted")
    max_prompt_length: int | None = option(None, "Tokens a long prompt keeps at least (unset: max_length / 2)")
    lora_r: int = option(16, "LoRA rank; 0 trains all backbone weights")
    lora_alpha: int = option(32, "LoRA alpha")
    lora_dropout: float = option(0.0, "LoRA dropout")
    lora_target_modules: str = option("all-linear", "Comma-separated module names, or all-linear")
    objective: str = option("bt", "bt (reward head), haf (reward head + token-level policy loss) or dpo (policy loss alone; "
                                  "the reward is the implicit one)")
    beta: float = option(0.1, "β of the policy loss and the implicit reward")
    policy_loss: str = option("sigmoid", "sigmoid, ipo, hinge or simpo")

    def __post_init__(self) -> None:
        require(self, "max_length", self.max_length >= MIN_MAX_LENGTH, f"at least {MIN_MAX_LENGTH} tokens")
        if self.max_prompt_length is not None:
            require(self, "max_prompt_length", 0 < self.max_prompt_length < self.max_length, f"between 1 and max_length − 1 = {self.max_length - 1}")
        require(self, "lora_r", self.lora_r >= 0, "0 (full fine-tuning) or positive")
        require(self, "lora_alpha", self.lora_alpha > 0, "positive")
        require(self, "lora_dropout", 0 <= self.lora_dropout < 1, "in [0, 1)")
        require(self, "objective", self.objective in OBJECTIVES, f"one of {', '.join(OBJECTIVES)}")
        require(self, "beta", self.beta > 0, "positive")
        require(self, "policy_loss", self.policy_loss in POLICY_LOSSES, f"one of {', '.join(POLICY_LOSSES)}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


@dataclass
class TrainConfig(ModelConfig):
    """Everything a training run needs besides its data. Batch sizes count pairs."""

    epochs: int = option(1, "Passes over the data")
    batch_size: int = option(8, "Pairs per optimizer step, summed over all processes")
    micro_batch_size: int = option(8, "Pairs per forward pass on one process; gradients accumulate below batch_size")
    learning_rate: float = option(1e-4, "Peak learning rate of AdamW")
    weight_decay: float = option(0.0, "AdamW weight decay")
    warmup_ratio: float = option(0.03, "Share of the steps with a linear warm-up")
    lr_scheduler: str = option("linear", "linear, cosine or constant (after warm-up)")
    max_grad_norm: float = option(1.0, "Gradient clipping norm; 0 disables clipping")
    center_rewards_coefficient: float = option(0.0, "c in the centring term c·(r_c + r_r)²")
    reward_weight: float = option(1.0, "λ: weight of the Bradley–Terry loss in the haf objective")
    policy_weight: float = option(0.2, "α: weight of the token-level policy loss in the haf objective")
    simpo_gamma: float = option(0.5, "γ margin of the simpo policy loss")
    ref_cache_dir: str | None = option(None, "Also keep reference log-probabilities on disk here, keyed by model and data")
    eval_every: int = option(0, "Steps between evaluations on the eval data; 0: only at the end")
    save_every: int = option(0, "Steps between checkpoints; 0: none")
    keep_checkpoints: int = option(2, "Newest checkpoints kept on disk")
    eval_batch_size: int = option(16, "Sequences per forward pass when evaluating")
    gradient_checkpointing: bool = option(False, "Recompute activations in the backward pass: less memory, more compute")
    report_to: str = option("none", "Trackers besides metrics.jsonl, comma-separated: tensorboard, wandb, mlflow, … (installed "
                                    "separately; logs under OUTPUT_DIR/logs), or none")
    seed: int = option(42, "Random seed")
    skip_invalid: bool = option(False, "Count and skip invalid rows instead of stopping at the first")
    columns: Columns = option(factory=Columns)
    compute: ComputeConfig = option(factory=ComputeConfig)

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
        trackers = self.report_to.split(",")
        if self.report_to != "none":
            unknown = [t for t in trackers if t not in TRACKERS]
            require(self, "report_to", not unknown, f"none or a comma-separated list of {', '.join(TRACKERS)}")
            missing = [t for t in trackers if importlib.util.find_spec(TRACKERS[t]) is None]
            require(self, "report_to", not missing, f"trackers whose package is installed ({', '.join(missing)}: pip install it)")

    @staticmethod
    def from_trl_names(data: dict[str, Any], where: str) -> dict[str, Any]:
        """Options under TRL's names (RewardConfig, TrainingArguments, ModelConfig) in ours; see
        docs/training.md. gradient_accumulation_steps sets batch_size = micro_batch_size × steps × WORLD_SIZE
        (TRL's global batch); use_peft: false trains all weights (lora_r 0); options of TRL's that do
        not change the result here (logging, hub, output_dir) are listed on stderr and ignored."""
        data = dict(data)
        for trl_name, ours in TRL_NAMES.items():
            if trl_name in data:
                if ours in data and data[ours] != data[trl_name]:
                    raise UserError(f"{where}: {trl_name} (TRL's name for {ours}) and {ours} are both given, with different values")
                data[ours] = data.pop(trl_name)
        if "epochs" in data and isinstance(data["epochs"], float):
            if not data["epochs"].is_integer():
                raise UserError(f"{where}: num_train_epochs must be a whole number of passes here, got {data['epochs']}")
            data["epochs"] = int(data["epochs"])
        if "per_device_eval_batch_size" in data:  # TRL counts pairs, eval_batch_size counts sequences
            data["eval_batch_size"] = 2 * data.pop("per_device_eval_batch_size")
        if "use_peft" in data and not data.pop("use_peft"):
            data["lora_r"] = 0
        steps = data.pop("gradient_accumulation_steps", None)
        if steps is not None:
            micro = data.get("micro_batch_size", TrainConfig.micro_batch_size)
            data["batch_size"] = micro * int(steps) * int(os.environ.get("WORLD_SIZE", "1"))
        ignored = sorted(k for k in data if k in TRL_IGNORED)
        if ignored:
            print(f"{where}: ignored TRL options that do not apply here: {', '.join(ignored)}", file=sys.stderr)
        return {k: v for k, v in data.items() if k not in TRL_IGNORED}


TRL_NAMES = {  # TRL's name → ours, where the meaning is the same
    "per_device_train_batch_size": "micro_batch_size",
    "num_train_epochs": "epochs",
    "lr_scheduler_type": "lr_scheduler",
    "eval_steps": "eval_every",
    "save_steps": "save_every",
    "save_total_limit": "keep_checkpoints",
    "model_name_or_path": "model",
    "dataset_train_split": "split",
}
TRL_IGNORED = {"output_dir", "logging_steps", "logging_strategy", "logging_dir", "eval_strategy", "save_strategy", "push_to_hub",
               "hub_model_id", "run_name", "remove_unused_columns", "dataloader_num_workers", "disable_dropout", "logging_first_step",
               "overwrite_output_dir", "do_train", "do_eval", "dataset_name", "dataset_test_split", "torch_dtype", "dtype",
               "trust_remote_code", "load_best_model_at_end", "metric_for_best_model", "optim", "tf32",
               "dataset_num_proc", "use_liger_kernel"}


@dataclass
class EvalConfig:
    """Options of `rewardstack eval`."""

    format: str = option("auto", "auto (pairs, lists of responses, A/B labels), rewardbench (v1 sections) or rewardbench2")
    batch_size: int = option(16, "Sequences per forward pass")
    ref_cache_dir: str | None = option(None, "Keep reference log-probabilities (haf, dpo) on disk here")
    response_a_key: str = option("response_A", "Column of response A in A/B-labelled rows")
    response_b_key: str = option("response_B", "Column of response B in A/B-labelled rows")
    label_key: str = option("label", "Column of the A/B label: A>B, B>A, A=B or tie (also A, B, 1, 2, 0)")
    skip_invalid: bool = option(False, "Count and skip invalid rows instead of stopping at the first")
    columns: Columns = option(factory=Columns)
    compute: ComputeConfig = option(factory=ComputeConfig)

    def __post_init__(self) -> None:
        require(self, "batch_size", self.batch_size >= 1, "at least 1")
        require(self, "format", self.format in EVAL_FORMATS, f"one of {', '.join(EVAL_FORMATS)}")

    @property
    def ab_keys(self) -> tuple[str, str, str]:
        return self.response_a_key, self.response_b_key, self.label_key


EVAL_FORMATS = ("auto", "rewardbench", "rewardbench2")
LAPLACE_SUBSETS = ("all", "head", "lora")
PRIOR_METHODS = ("evidence", "val")


@dataclass
class LaplaceConfig:
    """Options of `rewardstack laplace` (and of `Laplace`)."""

    subset: str = option("all", "all: LoRA weights and reward head; head: the reward head alone; lora: the LoRA weights alone")
    prior: str = option("evidence", "evidence: prior precision by marginal likelihood; val: by the Laplace NLL on the validation data")
    batch_size: int = option(8, "Pairs per forward/backward pass")
    max_factor_size: int = option(1024, "Kronecker factors with a larger side are kept as rank factor_rank plus a diagonal")
    factor_rank: int = option(128, "Eigenpairs kept of a large factor")
    skip_invalid: bool = option(False, "Count and skip invalid rows instead of stopping at the first")
    columns: Columns = option(factory=Columns)
    compute: ComputeConfig = option(factory=ComputeConfig)

    def __post_init__(self) -> None:
        require(self, "subset", self.subset in LAPLACE_SUBSETS, f"one of {', '.join(LAPLACE_SUBSETS)}")
        require(self, "prior", self.prior in PRIOR_METHODS, f"one of {', '.join(PRIOR_METHODS)}")
        for name in ("batch_size", "max_factor_size", "factor_rank"):
            require(self, name, getattr(self, name) >= 1, "at least 1")


@dataclass
class ScoreConfig:
    """Options of `rewardstack score` and `rewardstack compose calibrate`: rows of a prompt and a response."""

    prompt_key: str = option("prompt", "Column of the prompt")
    response_key: str = option("response", "Column of the response")
    batch_size: int = option(16, "Sequences per forward pass")
    chunk_rows: int = option(4096, "score: rows scored and written at a time; a killed run continues after its last finished "
                                   "chunk with --resume")
    skip_invalid: bool = option(False, "Count and skip invalid rows instead of stopping at the first")
    compute: ComputeConfig = option(factory=ComputeConfig)

    def __post_init__(self) -> None:
        require(self, "batch_size", self.batch_size >= 1, "at least 1")
        require(self, "chunk_rows", self.chunk_rows >= 1, "at least 1")


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
    """`cls` from a mapping of option: value, each checked against its field's type (nested dataclasses
    from nested mappings); a class with `from_trl_names` also takes TRL's names."""
    if hasattr(cls, "from_trl_names"):
        data = cls.from_trl_names(data, where)
        for name, group in (("split", "columns"), ("bf16", "compute"), ("attn_implementation", "compute")):
            if name in data:
                data[group] = {**data.get(group, {}), name: data.pop(name)}
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
    allowed = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    if value is None and type(None) in allowed:
        return None
    for sequence in (a for a in allowed if typing.get_origin(a) in (list, tuple)):
        if isinstance(value, (list, tuple)):
            item = typing.get_args(sequence)[0]
            return typing.get_origin(sequence)(_check_type(v, item, f"{where}, item {i}") for i, v in enumerate(value))
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
