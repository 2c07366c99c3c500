"""Training loop on accelerate: the same code runs on one process or under `accelerate launch`.

A step consumes one global batch of `batch_size` pairs. Each process takes every world-th pair of it and
splits its share into micro-batches of at most `micro_batch_size`; the loss of a micro-batch is
Σ loss_i · world / |global batch|, so after DDP averages gradients across processes every step follows
the gradient of the mean loss over the global batch, whatever the number of processes.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import DistributedType, set_seed
from safetensors.torch import save_file
from tqdm.auto import tqdm
from transformers import get_scheduler

from .config import ComputeConfig, TrainConfig
from .data.encode import EncodedPairs, encode_pairs
from .data.load import load_preferences, named_data
from .distributed import cpu_accelerator, is_main_process
from .errors import UserError
from .evaluation import evaluate_encoded
from .files import atomic_path, check_output_dir, load_tensors, load_torch, mark_output_dir, read_json, write_json, write_text
from .losses import bradley_terry_loss, policy_loss
from .model import RewardModel, cached_reference_logprobs
from .packing import Packed, pack_pairs

LENGTH_GROUP = 16  # batches per shuffled chunk that is sorted by length
SHARDS_FILE = "optimizer-shards.pt"  # a sharded run's checkpoint: each process's optimizer state


def float32_accelerator(compute: ComputeConfig | None = None, report_to: str = "none", logging_dir: Path | None = None) -> Accelerator:
    """An Accelerator on `compute.device` (auto by default) computing in float32 (the CPU default), or under
    bf16 autocast when `compute.bf16`, with the trackers of `report_to` writing under `logging_dir`. Without
    cpu=True accelerate ignores a multi-process launch on a machine with no accelerator (see cpu_accelerator).
    A process whose accelerate state another trainer set to another precision (TRL's GRPOConfig defaults to
    bf16) cannot change it: say so."""
    options: dict[str, Any] = {"mixed_precision": "bf16" if compute is not None and compute.bf16 else "no"}
    if report_to != "none":
        options.update(log_with=report_to.split(","), project_dir=logging_dir)
    try:
        on_cpu = not torch.accelerator.is_available() or (compute is not None and compute.device == "cpu")
        return cpu_accelerator(**options) if on_cpu else Accelerator(**options)
    except ValueError as err:
        if "already been initialized" not in str(err):
            raise
        raise UserError("accelerate was already set up in this process with another precision (by another trainer, e.g. TRL's "
                        "bf16 default); rewardstack computes in float32: run it in its own process, or set that trainer's bf16=False") from None


def weights_sharded(accelerator: Accelerator) -> bool:
    """Whether the weights are split across processes (FSDP, DeepSpeed), so no process holds them all."""
    return accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)


def plan_batches(lengths: Sequence[int], batch_size: int, epochs: int, seed: int) -> list[list[int]]:
    """Global batches for all epochs: per epoch a seeded shuffle, sorted by length within chunks of
    LENGTH_GROUP batches (little padding), then the batches shuffled. Every pair is used once per epoch."""
    batches = []
    for epoch in range(epochs):
        rng = np.random.default_rng(seed + epoch)
        order = rng.permutation(len(lengths)).tolist()
        chunk = batch_size * LENGTH_GROUP
        epoch_batches = []
        for start in range(0, len(order), chunk):
            part = sorted(order[start : start + chunk], key=lambda i: -lengths[i])
            epoch_batches += [part[i : i + batch_size] for i in range(0, len(part), batch_size)]
        batches += [epoch_batches[i] for i in rng.permutation(len(epoch_batches))]
    return batches


def micro_batches(global_batch: list[int], rank: int, world: int, micro_batch_size: int) -> list[tuple[list[int], float]]:
    """This process's micro-batches of a global batch as (pair indices, weight). Every process gets the
    same number of them (DDP needs matching backward passes); an empty share reuses a pair with weight 0."""
    share = global_batch[rank::world]
    count = math.ceil(math.ceil(len(global_batch) / world) / micro_batch_size)
    out = []
    for part in np.array_split(np.array(share, dtype=int), count):
        if len(part):
            out.append((part.tolist(), 1.0))
        else:
            out.append(([global_batch[0]], 0.0))
    return out


@dataclass
class PairBatch:
    """Some pairs packed for one forward pass (rewardstack.packing): outputs are the chosen, then the
    rejected, in `indices` order."""

    packed: Packed
    response_lengths: torch.Tensor
    margin: torch.Tensor
    indices: list[int]

    def to(self, device) -> "PairBatch":
        return PairBatch(self.packed.to(device), self.response_lengths.to(device), self.margin.to(device), self.indices)


def collate_pairs(data: EncodedPairs, indices: list[int], pad_id: int, compute: ComputeConfig) -> PairBatch:
    """A pair shares its prompt (and any common start of its responses) with `compute.share_prompts`;
    pairs pack into rows of compute.pack_tokens."""
    sequences = [data.chosen[i] for i in indices] + [data.rejected[i] for i in indices]
    return PairBatch(
        pack_pairs(data, indices, pad_id, compute.pack_tokens, compute.share_prompts),
        torch.tensor([len(e.response_ids) for e in sequences], dtype=torch.float32),
        torch.tensor([data.margin[i] for i in indices], dtype=torch.float32),
        indices,
    )


def objective_losses(model: torch.nn.Module, batch: PairBatch, config: TrainConfig, reference: torch.Tensor | None) -> torch.Tensor:
    """Per-pair loss of the configured objective:
      bt:  L_BT (see losses.bradley_terry_loss)
      haf: λ·L_BT + α·L_policy, both from one backbone pass (reward head and LM head)
      dpo: L_policy alone
    `reference` holds the reference log-probabilities of the pairs as (pairs, 2): chosen, rejected."""
    n = len(batch.indices)
    if config.objective == "bt":
        rewards = model(batch.packed)
        return bradley_terry_loss(rewards[:n], rewards[n:], batch.margin, config.center_rewards_coefficient)
    rewards, logps = model(batch.packed, logprobs=True)
    ref_c, ref_r = (None, None) if reference is None else (reference[batch.indices, 0], reference[batch.indices, 1])
    policy = policy_loss(logps[:n], logps[n:], ref_c, ref_r, config.beta, config.policy_loss,
                         batch.response_lengths[:n], batch.response_lengths[n:], config.simpo_gamma)
    if config.objective == "dpo":
        return policy
    bt = bradley_terry_loss(rewards[:n], rewards[n:], batch.margin, config.center_rewards_coefficient)
    return config.reward_weight * bt + config.policy_weight * policy


def reference_logprobs(model: RewardModel, data: EncodedPairs, config: TrainConfig) -> torch.Tensor:
    """log π_ref of every pair's chosen and rejected response, shape (pairs, 2), computed once before
    training while the model still is the reference (LoRA starts as the identity; full fine-tuning has
    not changed a weight yet), and kept on disk too when `ref_cache_dir` is set."""
    sequences = data.chosen + data.rejected
    logps = cached_reference_logprobs(
        config.ref_cache_dir, config.model, sequences, lambda: model.logprobs(sequences, config.eval_batch_size)
    )
    return torch.from_numpy(logps).float().reshape(2, len(data)).T.contiguous()


def train(config: TrainConfig, train_data: Any, eval_data: Any = None, output_dir: str | Path | None = None,
          resume: bool = False) -> tuple[RewardModel, dict[str, Any]]:
    """Train a reward model on `train_data`, evaluating on `eval_data` ({name: data}, or anything
    `named_data` takes); data is anything `load_preferences` reads. Writes the run directory
    `output_dir` (config.yaml, metrics.jsonl, checkpoints/, model/, summary.json; a temporary one that
    is removed afterwards when None). Returns the trained model and the summary (empty on processes
    other than the main one)."""
    if output_dir is None:
        if resume or config.save_every:
            raise UserError("train: --resume and save_every need an output directory to keep checkpoints in")
        with tempfile.TemporaryDirectory(prefix="rewardstack-train-") as tmp:
            return train(config, train_data, eval_data, Path(tmp) / "run")
    output_dir = Path(output_dir)
    check_output_dir(output_dir, "--output-dir", "train", resume)
    if not resume and (output_dir / "metrics.jsonl").exists():
        raise UserError(f"{output_dir} already holds a run: pass --resume to continue it or choose a new --output-dir")
    accelerator = float32_accelerator(config.compute, config.report_to, output_dir / "logs")
    set_seed(config.seed)
    run = _Run.prepare(config, train_data, named_data(eval_data) if eval_data is not None else {}, accelerator,
                       resume_dir=output_dir if resume else None)
    run_config = run.settings()
    start_step = run.start_step
    if accelerator.is_main_process:
        mark_output_dir(output_dir, "train")
        write_text(output_dir / "config.yaml", yaml.safe_dump(run_config, sort_keys=False))
        _trim_metrics(output_dir / "metrics.jsonl", start_step)
    log = _MetricsLog(output_dir / "metrics.jsonl", accelerator, config.report_to, run_config)
    seconds, tokens = run.loop(start_step, output_dir, log)
    summary: dict[str, Any] = {}
    trained = run.gathered()
    if accelerator.is_main_process:
        final_eval = run.evaluate(trained, len(run.batches), log)
        _save_final(trained, output_dir)
        summary = {
            "steps": len(run.batches),
            "resumed_from_step": start_step,
            "train": {**run.report.to_dict(), "truncated": run.train_set.truncated},
            "eval_data": {name: {**rep.to_dict(), "truncated": enc.truncated} for name, (enc, rep) in run.eval_sets.items()},
            "eval": final_eval,
            "train_seconds": seconds,
            "tokens_per_second": tokens / seconds if seconds > 0 else None,
            "processes": accelerator.num_processes,
        }
        write_json(output_dir / "summary.json", summary)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return trained if trained is not None else run.unwrapped, summary


@dataclass
class _Run:
    """A training run's state: data, model, optimizer, schedule and the global batches of every step."""

    config: TrainConfig
    accelerator: Accelerator
    model: torch.nn.Module  # as prepared by accelerate (DDP-wrapped, or sharded by FSDP, on several processes)
    unwrapped: RewardModel
    optimizer: torch.optim.Optimizer
    scheduler: Any
    train_set: EncodedPairs
    report: Any
    eval_sets: dict[str, tuple[EncodedPairs, Any]]
    reference: torch.Tensor | None
    batches: list[list[int]]
    start_step: int = 0
    gathered_copy: RewardModel | None = None  # the main process's whole copy of a sharded model (gathered())

    @classmethod
    def prepare(cls, config: TrainConfig, train_data: Any, eval_data: dict[str, Any], accelerator: Accelerator,
                resume_dir: Path | None = None) -> "_Run":
        """Everything a run needs. Resuming the run in `resume_dir` (same options, else an error), the
        newest checkpoint's weights are loaded before accelerate wraps (and maybe shards) the model, and its
        optimizer, schedule and RNG state after."""
        pairs, report = load_preferences(train_data, config.columns, config.skip_invalid)
        checkpoint = None
        if resume_dir is not None:
            check_same_run(resume_dir, run_settings(config, report.source, eval_data))
            checkpoint = _latest_checkpoint(resume_dir)
        model = _fresh_model(config, accelerator)
        if config.gradient_checkpointing:
            model.enable_gradient_checkpointing()
        train_set = encode_pairs(model.encoder, pairs)
        needs_reference = config.objective != "bt" and config.policy_loss != "simpo"
        reference = reference_logprobs(model, train_set, config).to(accelerator.device) if needs_reference else None
        eval_sets = {}
        for name, source in eval_data.items():
            eval_pairs, eval_report = load_preferences(source, config.columns, config.skip_invalid)
            eval_sets[name] = (encode_pairs(model.encoder, eval_pairs), eval_report)
        batches = plan_batches([train_set.tokens(i) for i in range(len(train_set))], config.batch_size, config.epochs, config.seed)
        optimizer = torch.optim.AdamW(model.trainable_parameters().values(), lr=config.learning_rate, weight_decay=config.weight_decay)
        scheduler = get_scheduler(
            "constant_with_warmup" if config.lr_scheduler == "constant" else config.lr_scheduler,
            optimizer,
            num_warmup_steps=math.ceil(config.warmup_ratio * len(batches)),
            **({} if config.lr_scheduler == "constant" else {"num_training_steps": len(batches)}),
        )
        if checkpoint is not None:
            checkpoint.load_weights(model)
        if accelerator.distributed_type == DistributedType.DEEPSPEED:  # the loop accumulates and clips as configured
            accelerator.state.deepspeed_plugin.deepspeed_config.update(
                train_micro_batch_size_per_gpu=config.micro_batch_size, gradient_accumulation_steps=1, gradient_clipping=config.max_grad_norm)
        prepared, optimizer = accelerator.prepare(model, optimizer)
        if checkpoint is not None:
            checkpoint.load_state(optimizer, scheduler, accelerator)
        return cls(config, accelerator, prepared, accelerator.unwrap_model(prepared), optimizer, scheduler, train_set, report,
                   eval_sets, reference, batches, checkpoint.step if checkpoint else 0)

    def settings(self) -> dict[str, Any]:
        return run_settings(self.config, self.report.source, self.eval_sets)

    @property
    def sharded(self) -> bool:
        return weights_sharded(self.accelerator)

    def gathered(self) -> RewardModel | None:
        """The trained model as one whole module on the main process (None on the others): the model
        itself, or, when sharded, a copy of it that receives the gathered trainable weights (frozen
        weights are the backbone's own). Every process must call this."""
        if not self.sharded:
            return self.unwrapped if self.accelerator.is_main_process else None
        state = self.accelerator.get_state_dict(self.model)  # whole on the main process
        if not self.accelerator.is_main_process:
            return None
        if self.gathered_copy is None:
            self.gathered_copy = _fresh_model(self.config, self.accelerator)
        with torch.no_grad():
            for name, param in self.gathered_copy.trainable_parameters().items():
                param.copy_(state[name])
        return self.gathered_copy

    def evaluate(self, model: RewardModel, step: int, log: "_MetricsLog") -> dict[str, Any]:
        """Metrics of `model` (the main process's gathered()) on every eval set, logged."""
        results = {name: evaluate_encoded(model, encoded, self.config.eval_batch_size) for name, (encoded, _) in self.eval_sets.items()}
        if results:
            log.write({"step": step, "eval": results})
        return results

    def checkpoint(self, output_dir: Path, step: int, rng_state: torch.Tensor | None = None) -> None:
        """save_checkpoint of the gathered model and this run's optimizer, whose state a sharded run
        keeps as one shard per process. Every process must call this."""
        model = self.gathered()
        optimizer_state: Any = self.optimizer.state_dict()
        if self.sharded:
            from accelerate.utils import gather_object

            optimizer_state = gather_object([_local_tensors(optimizer_state)])
        if model is not None:
            save_checkpoint(output_dir, step, model, optimizer_state, self.scheduler, self.config.keep_checkpoints, rng_state)
        self.accelerator.wait_for_everyone()

    def loop(self, start_step: int, output_dir: Path, log: "_MetricsLog") -> tuple[float, int]:
        """Steps start_step … end, with evaluations and checkpoints on their schedules; returns the
        seconds taken and the tokens processed over all processes."""
        config, accelerator, main = self.config, self.accelerator, self.accelerator.is_main_process
        self.model.train()
        tokens, started = 0, time.perf_counter()
        bar = tqdm(total=len(self.batches), initial=start_step, desc="train", disable=not main, dynamic_ncols=True)
        for step in range(start_step, len(self.batches)):
            rng_before = torch.get_rng_state()
            step_loss, step_tokens = self.accumulate(self.batches[step])
            tokens += step_tokens
            if not math.isfinite(step_loss):
                self.stop_on_nan(step, step_loss, rng_before, output_dir)
            if config.max_grad_norm > 0:
                accelerator.clip_grad_norm_(self.model.parameters(), config.max_grad_norm)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            log.write({"step": step + 1, "loss": step_loss, "lr": self.scheduler.get_last_lr()[0]})
            bar.update(1)
            bar.set_postfix(loss=f"{step_loss:.4f}")
            done = step + 1
            if config.eval_every and done % config.eval_every == 0 and done < len(self.batches):
                model = self.gathered()
                if main:
                    self.evaluate(model, done, log)
                accelerator.wait_for_everyone()
            if config.save_every and done % config.save_every == 0 and done < len(self.batches):
                self.checkpoint(output_dir, done)
        bar.close()
        seconds = time.perf_counter() - started
        return seconds, int(accelerator.reduce(torch.tensor(tokens, device=accelerator.device), "sum").item())

    def accumulate(self, global_batch: list[int]) -> tuple[float, int]:
        """Forward and backward over this process's micro-batches of one global batch, gradients synced
        on the last; returns the loss of the global batch (summed over processes) and this process's tokens."""
        accelerator, world = self.accelerator, self.accelerator.num_processes
        step_loss, tokens = torch.zeros((), dtype=torch.float64), 0
        parts = micro_batches(global_batch, accelerator.process_index, world, self.config.micro_batch_size)
        for i, (indices, weight) in enumerate(parts):
            with contextlib.nullcontext() if i == len(parts) - 1 else accelerator.no_sync(self.model):
                batch = collate_pairs(self.train_set, indices, self.unwrapped.tokenizer.pad_token_id, self.config.compute).to(accelerator.device)
                with accelerator.autocast():
                    losses = objective_losses(self.model, batch, self.config, self.reference)
                loss = losses.float().sum() * (weight * world / len(global_batch))
                self.backward(loss, last=i == len(parts) - 1)
            step_loss += loss.detach().double().cpu() / world
            tokens += int(weight) * sum(self.train_set.tokens(j) for j in indices)
        return accelerator.reduce(step_loss.to(accelerator.device), "sum").item(), tokens

    def backward(self, loss: torch.Tensor, last: bool) -> None:
        """accelerator.backward, except under DeepSpeed, whose engine accelerate would step after every
        micro-batch: there it steps after the last one only."""
        if self.accelerator.distributed_type != DistributedType.DEEPSPEED:
            self.accelerator.backward(loss)
            return
        self.model.set_gradient_accumulation_boundary(is_boundary=last)
        self.model.backward(loss)
        if last:
            self.model.step()

    def stop_on_nan(self, step: int, step_loss: float, rng_before: torch.Tensor, output_dir: Path) -> None:
        """Stop before the update (the weights are still those after `step` steps), checkpointing them."""
        missing = not (output_dir / "checkpoints" / f"step-{step}").exists()
        self.accelerator.wait_for_everyone()  # every process has looked before any writes
        if missing:
            self.checkpoint(output_dir, step, rng_before)
        global_batch = self.batches[step]
        raise UserError(f"training loss is {step_loss} at step {step + 1} (pairs {', '.join(map(str, global_batch[:8]))}"
                        f"{', …' if len(global_batch) > 8 else ''} of {self.report.source}): stopped before updating the model; the model after "
                        f"step {step} is checkpoint {output_dir / 'checkpoints' / f'step-{step}'}: continue with --resume once the cause is fixed")


class _MetricsLog:
    """metrics.jsonl on the main process, and the trackers of `report_to` (accelerate's: tensorboard,
    wandb, mlflow, …) beside it, which get the flat scalars of each record."""

    def __init__(self, path: Path, accelerator: Accelerator, report_to: str, run_config: dict[str, Any]):
        self.path, self.accelerator, self.trackers = path, accelerator, report_to != "none"
        if self.trackers:
            flat = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in run_config.items()}
            accelerator.init_trackers("rewardstack", config=flat)

    def write(self, record: dict[str, Any]) -> None:
        if self.accelerator.is_main_process:
            with open(self.path, "a") as handle:
                handle.write(json.dumps(record) + "\n")
        if self.trackers:
            self.accelerator.log(_scalars(record), step=record["step"])


def _scalars(record: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """{"eval": {"a.jsonl": {"accuracy": 0.7}}} → {"eval/a.jsonl/accuracy": 0.7}: the numbers of a record."""
    flat = {}
    for key, value in record.items():
        if key == "step" and not prefix:
            continue
        if isinstance(value, dict):
            flat.update(_scalars(value, f"{prefix}{key}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[f"{prefix}{key}"] = value
    return flat


def _trim_metrics(path: Path, step: int) -> None:
    """On resume, drop records logged after the checkpoint (they are produced again)."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in kept))


def _save_final(model: RewardModel, output_dir: Path) -> None:
    """Save the trained model; when that fails (a full disk), say how to get the run back."""
    try:
        model.save(output_dir / "model")
    except OSError as err:
        found = _checkpoints(output_dir)
        start = f"its checkpoint {found[-1].name}" if found else "the start (no checkpoint was kept: --save-every 0)"
        raise UserError(f"{output_dir / 'model'}: the trained model could not be saved ({err.strerror or err}); "
                        f"nothing was left half-written: free space and rerun with --resume to continue from {start}") from None


def save_checkpoint(output_dir: Path, step: int, model: RewardModel, optimizer_state: dict | list[dict], scheduler, keep: int,
                    rng_state: torch.Tensor | None = None) -> None:
    """Trainable weights (safetensors), optimizer state (a list: one shard per process, kept in
    SHARDS_FILE), scheduler and RNG state (default: the current one), written whole or not at all; older
    checkpoints pruned once the new one is in place."""
    with atomic_path(output_dir / "checkpoints" / f"step-{step}", directory=True) as tmp:
        weights = {name: p.detach().cpu().contiguous() for name, p in model.trainable_parameters().items()}
        save_file(weights, tmp / "trainable.safetensors")
        if isinstance(optimizer_state, list):
            torch.save(optimizer_state, tmp / SHARDS_FILE)
            optimizer_state = {"shards": len(optimizer_state)}
        torch_rng = torch.get_rng_state() if rng_state is None else rng_state
        torch.save({"optimizer": optimizer_state, "scheduler": scheduler.state_dict(), "torch_rng": torch_rng}, tmp / "state.pt")
        (tmp / "step.json").write_text(json.dumps({"step": step}))
    for old in _checkpoints(output_dir)[:-keep]:
        shutil.rmtree(old)


def _fresh_model(config: TrainConfig, accelerator: Accelerator) -> RewardModel:
    """The untrained model of `config` on this process's device."""
    model = RewardModel.create(config).use(replace(config.compute, device=str(accelerator.device)))
    model.training_config = asdict(config)
    return model


def _local_tensors(state: Any) -> Any:
    """An optimizer state with each sharded tensor (DTensor) replaced by this process's shard of it."""
    from torch.distributed.tensor import DTensor

    if isinstance(state, dict):
        return {key: _local_tensors(value) for key, value in state.items()}
    if isinstance(state, list):
        return [_local_tensors(value) for value in state]
    return state.to_local() if isinstance(state, DTensor) else state


def run_settings(config: TrainConfig, source: str, eval_data: dict[str, Any]) -> dict[str, Any]:
    """What a run's config.yaml records, and what a resumed run must repeat."""
    return {"data": source, "eval_data": list(eval_data), **asdict(config)}


def check_same_run(output_dir: Path, run_config: dict[str, Any]) -> None:
    """A resumed run must use the options it was started with, or its result would be neither run."""
    path = output_dir / "config.yaml"
    if not path.exists():
        raise UserError(f"{output_dir}: no run to resume (no config.yaml)")
    saved = yaml.safe_load(path.read_text())
    changed = sorted(k for k in run_config.keys() | saved.keys() if run_config.get(k) != saved.get(k))
    if changed:
        raise UserError(f"{output_dir}: --resume with other options than the run was started with: {', '.join(changed)}")


def _checkpoints(output_dir: Path) -> list[Path]:
    root = output_dir / "checkpoints"
    found = [p for p in root.glob("step-*") if (p / "step.json").exists()] if root.exists() else []
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


@dataclass
class _Checkpoint:
    """A checkpoint read back: step, trainable weights and the rest of the training state."""

    path: Path
    step: int
    weights: dict[str, torch.Tensor]
    state: dict[str, Any]

    def load_weights(self, model: RewardModel) -> None:
        params = model.trainable_parameters()
        if set(self.weights) != set(params):
            raise UserError(f"{self.path}: checkpoint does not match this configuration (different trainable weights)")
        with torch.no_grad():
            for name, value in self.weights.items():
                params[name].copy_(value)

    def load_state(self, optimizer, scheduler, accelerator: Accelerator) -> None:
        """Optimizer (a sharded run's: this process's shard), scheduler and RNG state."""
        saved = self.state["optimizer"]
        sharded = weights_sharded(accelerator)
        if sharded != ("shards" in saved) or (sharded and saved["shards"] != accelerator.num_processes):
            launch = f"{saved['shards']} sharded processes" if "shards" in saved else "unsharded weights"
            raise UserError(f"{self.path}: the checkpoint was written by a run with {launch}: resume it with the same accelerate launch")
        if sharded:
            shards = load_torch(self.path / SHARDS_FILE, _deepspeed_state_classes(accelerator))
            # DeepSpeed's ZeRO optimizer picks its own shard from the list
            deepspeed = accelerator.distributed_type == DistributedType.DEEPSPEED
            saved = shards if deepspeed else _as_dtensors(shards[accelerator.process_index], optimizer)
        optimizer.load_state_dict(saved)
        scheduler.load_state_dict(self.state["scheduler"])
        torch.set_rng_state(self.state["torch_rng"])


def _as_dtensors(state: dict, optimizer) -> dict:
    """An FSDP2 optimizer state saved by _local_tensors, each per-parameter tensor made a DTensor again
    laid out like its parameter."""
    from torch.distributed.tensor import DTensor

    params = [p for group in optimizer.param_groups for p in group["params"]]
    for index, values in state["state"].items():
        param = params[index]
        if isinstance(param, DTensor):
            for key, value in values.items():
                if value.dim() > 0:
                    values[key] = DTensor.from_local(value, param.device_mesh, param.placements, shape=param.shape, stride=param.stride())
    return state


def _deepspeed_state_classes(accelerator: Accelerator) -> list[type]:
    """The classes besides tensors in a DeepSpeed ZeRO optimizer's state (none without DeepSpeed)."""
    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        return []
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum

    return [ZeroStageEnum, LossScaler, DynamicLossScaler]


def _latest_checkpoint(output_dir: Path) -> _Checkpoint | None:
    """The newest checkpoint of a run; None (start over) when an unfinished run kept none."""
    found = _checkpoints(output_dir)
    if not found and (output_dir / "model").exists():
        raise UserError(f"{output_dir}: no checkpoint to resume from: the run has finished (its model is in {output_dir / 'model'})")
    if not found:
        if is_main_process():
            print(f"{output_dir}: no checkpoint was kept (--save-every 0): training again from the start")
        return None
    latest = found[-1]
    try:
        return _Checkpoint(latest, read_json(latest / "step.json")["step"], load_tensors(latest / "trainable.safetensors"), load_torch(latest / "state.pt"))
    except UserError as err:
        earlier = f"delete it to resume from {found[-2].name}" if len(found) > 1 else "delete it to train again from the start"
        raise UserError(f"checkpoint {latest.name} is damaged: {err}; {earlier}") from None
