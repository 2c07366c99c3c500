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
from accelerate.utils import set_seed
from safetensors.torch import save_file
from tqdm.auto import tqdm
from transformers import get_scheduler

from .config import ComputeConfig, TrainConfig
from .data.encode import EncodedPairs, encode_pairs
from .data.load import load_preferences, named_data
from .errors import UserError
from .evaluation import evaluate_encoded
from .files import atomic_path, check_output_dir, load_tensors, load_torch, mark_output_dir, read_json, write_json, write_text
from .losses import bradley_terry_loss, policy_loss
from .model import RewardModel, cached_reference_logprobs
from .packing import Packed, pack_pairs

LENGTH_GROUP = 16  # batches per shuffled chunk that is sorted by length


def float32_accelerator(config: TrainConfig | None = None, logging_dir: Path | None = None) -> Accelerator:
    """An Accelerator computing in float32 (the CPU default), or under bf16 autocast when `compute.bf16`,
    with the trackers of `config.report_to` writing under `logging_dir`. Without cpu=True accelerate ignores a
    multi-process launch on a machine with no accelerator. A process whose accelerate state another
    trainer set to another precision (TRL's GRPOConfig defaults to bf16) cannot change it: say so."""
    options: dict[str, Any] = {"mixed_precision": "bf16" if config is not None and config.compute.bf16 else "no"}
    if config is not None and config.report_to != "none":
        options.update(log_with=config.report_to.split(","), project_dir=logging_dir)
    try:
        on_cpu = not torch.accelerator.is_available() or (config is not None and config.compute.device == "cpu")
        return Accelerator(cpu=on_cpu, **options)
    except ValueError as err:
        if "already been initialized" not in str(err):
            raise
        raise UserError("accelerate was already set up in this process with another precision (by another trainer, e.g. TRL's "
                        "bf16 default); rewardstack computes in float32: run it in its own process, or set that trainer's bf16=False") from None


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
    accelerator = float32_accelerator(config, output_dir / "logs")
    set_seed(config.seed)
    run = _Run.prepare(config, train_data, named_data(eval_data) if eval_data is not None else {}, accelerator)
    run_config = {"data": run.report.source, "eval_data": list(run.eval_sets), **asdict(config)}
    start_step = 0
    if resume:
        check_same_run(output_dir, run_config)
        start_step = _load_latest_checkpoint(output_dir, run.unwrapped, run.optimizer, run.scheduler)
    if accelerator.is_main_process:
        mark_output_dir(output_dir, "train")
        write_text(output_dir / "config.yaml", yaml.safe_dump(run_config, sort_keys=False))
        _trim_metrics(output_dir / "metrics.jsonl", start_step)
    log = _MetricsLog(output_dir / "metrics.jsonl", accelerator, config.report_to, run_config)
    seconds, tokens = run.loop(start_step, output_dir, log)
    summary: dict[str, Any] = {}
    if accelerator.is_main_process:
        final_eval = run.evaluate(len(run.batches), log)
        _save_final(run.unwrapped, output_dir)
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
    return run.unwrapped, summary


@dataclass
class _Run:
    """A training run's state: data, model, optimizer, schedule and the global batches of every step."""

    config: TrainConfig
    accelerator: Accelerator
    model: torch.nn.Module  # as prepared by accelerate (DDP-wrapped on several processes)
    unwrapped: RewardModel
    optimizer: torch.optim.Optimizer
    scheduler: Any
    train_set: EncodedPairs
    report: Any
    eval_sets: dict[str, tuple[EncodedPairs, Any]]
    reference: torch.Tensor | None
    batches: list[list[int]]

    @classmethod
    def prepare(cls, config: TrainConfig, train_data: Any, eval_data: dict[str, Any], accelerator: Accelerator) -> "_Run":
        pairs, report = load_preferences(train_data, config.columns, config.skip_invalid)
        model = RewardModel.create(config).use(replace(config.compute, device=str(accelerator.device)))
        model.training_config = asdict(config)
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
        prepared, optimizer = accelerator.prepare(model, optimizer)
        return cls(config, accelerator, prepared, accelerator.unwrap_model(prepared), optimizer, scheduler, train_set, report,
                   eval_sets, reference, batches)

    def evaluate(self, step: int, log: "_MetricsLog") -> dict[str, Any]:
        results = {name: evaluate_encoded(self.unwrapped, encoded, self.config.eval_batch_size) for name, (encoded, _) in self.eval_sets.items()}
        if results:
            log.write({"step": step, "eval": results})
        return results

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
                if main:
                    self.evaluate(done, log)
                accelerator.wait_for_everyone()
            if config.save_every and done % config.save_every == 0 and done < len(self.batches):
                if main:
                    save_checkpoint(output_dir, done, self.unwrapped, self.optimizer, self.scheduler, config.keep_checkpoints)
                accelerator.wait_for_everyone()
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
                accelerator.backward(loss)
            step_loss += loss.detach().double().cpu() / world
            tokens += int(weight) * sum(self.train_set.tokens(j) for j in indices)
        return accelerator.reduce(step_loss.to(accelerator.device), "sum").item(), tokens

    def stop_on_nan(self, step: int, step_loss: float, rng_before: torch.Tensor, output_dir: Path) -> None:
        """Stop before the update (the weights are still those after `step` steps), checkpointing them."""
        if self.accelerator.is_main_process and not (output_dir / "checkpoints" / f"step-{step}").exists():
            save_checkpoint(output_dir, step, self.unwrapped, self.optimizer, self.scheduler, self.config.keep_checkpoints, rng_before)
        self.accelerator.wait_for_everyone()
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


def save_checkpoint(output_dir: Path, step: int, model: RewardModel, optimizer, scheduler, keep: int, rng_state: torch.Tensor | None = None) -> None:
    """Trainable weights (safetensors), optimizer, scheduler and RNG state (default: the current one),
    written whole or not at all; older checkpoints pruned once the new one is in place."""
    with atomic_path(output_dir / "checkpoints" / f"step-{step}", directory=True) as tmp:
        weights = {name: p.detach().cpu().contiguous() for name, p in model.trainable_parameters().items()}
        save_file(weights, tmp / "trainable.safetensors")
        torch_rng = torch.get_rng_state() if rng_state is None else rng_state
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "torch_rng": torch_rng}, tmp / "state.pt")
        (tmp / "step.json").write_text(json.dumps({"step": step}))
    for old in _checkpoints(output_dir)[:-keep]:
        shutil.rmtree(old)


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


def _load_latest_checkpoint(output_dir: Path, model: RewardModel, optimizer, scheduler) -> int:
    """The step of the newest checkpoint, loaded into model, optimizer and scheduler; 0 (start over) when
    an unfinished run kept none."""
    found = _checkpoints(output_dir)
    if not found and (output_dir / "model").exists():
        raise UserError(f"{output_dir}: no checkpoint to resume from: the run has finished (its model is in {output_dir / 'model'})")
    if not found:
        print(f"{output_dir}: no checkpoint was kept (--save-every 0): training again from the start")
        return 0
    latest = found[-1]
    try:
        weights = load_tensors(latest / "trainable.safetensors")
        state = load_torch(latest / "state.pt")
        step = read_json(latest / "step.json")["step"]
    except UserError as err:
        earlier = f"delete it to resume from {found[-2].name}" if len(found) > 1 else "delete it to train again from the start"
        raise UserError(f"checkpoint {latest.name} is damaged: {err}; {earlier}") from None
    params = model.trainable_parameters()
    if set(weights) != set(params):
        raise UserError(f"{latest}: checkpoint does not match this configuration (different trainable weights)")
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    return step
