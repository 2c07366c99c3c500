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
import time
from dataclasses import asdict, dataclass
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

from .config import TrainConfig
from .data.encode import EncodedPairs, encode_pairs, pad_right
from .data.load import load_preferences
from .errors import UserError
from .files import atomic_path, check_output_dir, load_tensors, load_torch, mark_output_dir, read_json, write_json, write_text
from .evaluate import evaluate_encoded
from .losses import bradley_terry_loss, policy_loss
from .model import RewardModel, cached_reference_logprobs

LENGTH_GROUP = 16  # batches per shuffled chunk that is sorted by length


def float32_accelerator() -> Accelerator:
    """An Accelerator computing in float32 (the CPU default). Without cpu=True accelerate ignores a
    multi-process launch on a machine with no accelerator. A process whose accelerate state another
    trainer set to another precision (TRL's GRPOConfig defaults to bf16) cannot change it: say so."""
    try:
        return Accelerator(cpu=not torch.accelerator.is_available(), mixed_precision="no")
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
    """Chosen sequences of some pairs followed by their rejected ones, right-padded."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    prompt_lengths: torch.Tensor
    response_lengths: torch.Tensor
    margin: torch.Tensor
    indices: list[int]

    def to(self, device) -> "PairBatch":
        moved = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in vars(self).items()}
        return PairBatch(**moved)


def collate_pairs(data: EncodedPairs, indices: list[int], pad_id: int) -> PairBatch:
    encoded = [data.chosen[i] for i in indices] + [data.rejected[i] for i in indices]
    ids, mask = pad_right([e.ids for e in encoded], pad_id)
    return PairBatch(
        ids, mask,
        torch.tensor([len(e.prompt_ids) for e in encoded]),
        torch.tensor([len(e.response_ids) for e in encoded], dtype=torch.float32),
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
        rewards = model(batch.input_ids, batch.attention_mask)
        return bradley_terry_loss(rewards[:n], rewards[n:], batch.margin, config.center_rewards_coefficient)
    rewards, logps = model(batch.input_ids, batch.attention_mask, batch.prompt_lengths)
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


def train(
    config: TrainConfig,
    data: str,
    output_dir: str | Path,
    eval_data: Sequence[str] = (),
    resume: bool = False,
) -> dict[str, Any]:
    """Train a reward model on `data`, evaluating on `eval_data`; write the run directory:
    config.yaml, metrics.jsonl, checkpoints/, model/ and summary.json. Returns the summary."""
    output_dir = Path(output_dir)
    check_output_dir(output_dir, "--output-dir", "train", resume)
    if not resume and (output_dir / "metrics.jsonl").exists():
        raise UserError(f"{output_dir} already holds a run: pass --resume to continue it or choose a new --output-dir")
    accelerator = float32_accelerator()
    rank, world = accelerator.process_index, accelerator.num_processes
    main = accelerator.is_main_process
    set_seed(config.seed)

    pairs, report = load_preferences(data, config.columns, config.skip_invalid)
    model = RewardModel.create(config)
    model.training_config = asdict(config)
    train_set = encode_pairs(model.encoder, pairs)
    needs_reference = config.objective != "bt" and config.policy_loss != "simpo"
    reference = reference_logprobs(model, train_set, config).to(accelerator.device) if needs_reference else None
    eval_sets = {}
    for source in eval_data:
        eval_pairs, eval_report = load_preferences(source, config.columns, config.skip_invalid)
        eval_sets[str(source)] = (encode_pairs(model.encoder, eval_pairs), eval_report)

    batches = plan_batches([train_set.tokens(i) for i in range(len(train_set))], config.batch_size, config.epochs, config.seed)
    total_steps = len(batches)
    optimizer = torch.optim.AdamW(model.trainable_parameters().values(), lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = get_scheduler(
        "constant_with_warmup" if config.lr_scheduler == "constant" else config.lr_scheduler,
        optimizer,
        num_warmup_steps=math.ceil(config.warmup_ratio * total_steps),
        **({} if config.lr_scheduler == "constant" else {"num_training_steps": total_steps}),
    )
    model, optimizer = accelerator.prepare(model, optimizer)
    unwrapped: RewardModel = accelerator.unwrap_model(model)

    run_config = {"data": str(data), "eval_data": [str(e) for e in eval_data], **asdict(config)}
    start_step = 0
    if resume:
        check_same_run(output_dir, run_config)
        start_step = _load_latest_checkpoint(output_dir, unwrapped, optimizer, scheduler)
    if main:
        mark_output_dir(output_dir, "train")
        write_text(output_dir / "config.yaml", yaml.safe_dump(run_config, sort_keys=False))
        _trim_metrics(output_dir / "metrics.jsonl", start_step)
    log = _MetricsLog(output_dir / "metrics.jsonl", enabled=main)

    def run_eval(step: int) -> dict[str, Any]:
        results = {name: evaluate_encoded(unwrapped, encoded, config.eval_batch_size) for name, (encoded, _) in eval_sets.items()}
        if results:
            log.write({"step": step, "eval": results})
        return results

    pad_id = unwrapped.tokenizer.pad_token_id
    model.train()
    tokens, started = 0, time.perf_counter()
    bar = tqdm(total=total_steps, initial=start_step, desc="train", disable=not main, dynamic_ncols=True)
    for step in range(start_step, total_steps):
        global_batch = batches[step]
        rng_before = torch.get_rng_state()
        step_loss = torch.zeros((), dtype=torch.float64)
        parts = micro_batches(global_batch, rank, world, config.micro_batch_size)
        for i, (indices, weight) in enumerate(parts):
            sync = i == len(parts) - 1
            with contextlib.nullcontext() if sync else accelerator.no_sync(model):
                batch = collate_pairs(train_set, indices, pad_id).to(accelerator.device)
                losses = objective_losses(model, batch, config, reference)
                loss = losses.sum() * (weight * world / len(global_batch))
                accelerator.backward(loss)
            step_loss += loss.detach().double().cpu() / world
            tokens += int(weight) * sum(train_set.tokens(j) for j in indices)
        step_loss = accelerator.reduce(step_loss.to(accelerator.device), "sum").item()
        if not math.isfinite(step_loss):  # stop before the update: the weights are still those after `step` steps
            if main and not (output_dir / "checkpoints" / f"step-{step}").exists():
                save_checkpoint(output_dir, step, unwrapped, optimizer, scheduler, config.keep_checkpoints, rng_before)
            accelerator.wait_for_everyone()
            raise UserError(f"training loss is {step_loss} at step {step + 1} (pairs {', '.join(map(str, global_batch[:8]))}"
                            f"{', …' if len(global_batch) > 8 else ''} of {data}): stopped before updating the model; the model after "
                            f"step {step} is checkpoint {output_dir / 'checkpoints' / f'step-{step}'}: continue with --resume once the cause is fixed")
        if config.max_grad_norm > 0:
            accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        log.write({"step": step + 1, "loss": step_loss, "lr": scheduler.get_last_lr()[0]})
        bar.update(1)
        bar.set_postfix(loss=f"{step_loss:.4f}")
        done = step + 1
        if config.eval_every and done % config.eval_every == 0 and done < total_steps:
            if main:
                run_eval(done)
            accelerator.wait_for_everyone()
        if config.save_every and done % config.save_every == 0 and done < total_steps:
            if main:
                save_checkpoint(output_dir, done, unwrapped, optimizer, scheduler, config.keep_checkpoints)
            accelerator.wait_for_everyone()
    bar.close()
    seconds = time.perf_counter() - started
    tokens = int(accelerator.reduce(torch.tensor(tokens, device=accelerator.device), "sum").item())

    summary: dict[str, Any] = {}
    if main:
        final_eval = run_eval(total_steps)
        _save_final(unwrapped, output_dir)
        summary = {
            "steps": total_steps,
            "resumed_from_step": start_step,
            "train": {**report.to_dict(), "truncated": train_set.truncated},
            "eval_data": {name: {**rep.to_dict(), "truncated": enc.truncated} for name, (enc, rep) in eval_sets.items()},
            "eval": final_eval,
            "train_seconds": seconds,
            "tokens_per_second": tokens / seconds if seconds > 0 else None,
            "processes": world,
        }
        write_json(output_dir / "summary.json", summary)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return summary


class _MetricsLog:
    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = path, enabled

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with open(self.path, "a") as handle:
                handle.write(json.dumps(record) + "\n")


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
