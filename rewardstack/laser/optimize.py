"""Iterative preference optimisation with the reward source chosen per prompt or per batch (LASeR).

For iterations m = 1 … M over the prompts (shuffled with seed + m), batch by batch:
1. choose a source for each prompt: the bandit on the prompt's context (per instance) or one for the
   batch on its mean context (per batch, the selector's `per`) (`bandit`); one member (`single:NAME`); a
   uniformly random member, per prompt or per batch as the bandit would (`random`); or the mean of all
   members (`ensemble`);
2. sample n responses per prompt from the current policy (LoRA on the backbone) and score each prompt's
   responses with its source;
3. pairs: each prompt's best response against each of the next `pairs_per_prompt` ranked ones (strictly
   lower reward);
4. one AdamW step on L = mean over pairs of DPO(β) + w_nll · (−log π(y_best|x) / |y_best|), the
   reference being the policy at the start of the iteration (previous iteration's policy);
5. the bandit's feedback, from the prompt's own pairs (per instance) or the batch's (per batch): −L
   (`feedback: loss`, the paper's), or with answers the mean of correct(chosen) − correct(rejected)
   (`feedback: gold`, verifiable); normalised by running percentiles.
After each iteration: greedy accuracy on every dev set (answers checked; per prompt in `dev_correct`), a checkpoint
(iter-m/: adapter, AdamW state, bandit state, the iteration's pairs, metrics.json) and a line in history.jsonl; `resume`
continues after the newest checkpoint as if the run had not stopped.
"""

from __future__ import annotations

import json
import math
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import yaml
from peft import set_peft_model_state_dict

from ..data.encode import MIN_MAX_LENGTH, as_messages, encode_pairs
from ..data.load import PreferencePair
from ..data.pools import PromptRow
from ..errors import UserError, require
from ..files import atomic_path, check_output_dir, load_tensors, load_torch, mark_output_dir, write_json, write_text
from ..gold import answer_is_correct
from ..losses import policy_loss
from ..model import ModelConfig, RewardModel
from ..config import ComputeConfig
from ..options import option
from ..sampling import Samples, SamplingConfig, VllmSampler, generation_backend, sample_responses
from .selector import BanditSelector, score_assigned
from ..sources.combine import Ensemble
from ..training import check_same_run, collate_pairs

SELECTIONS = ("bandit", "random", "ensemble", "single:NAME")
FEEDBACK = ("loss", "gold")


@dataclass
class OptimizeConfig:
    """Options of `rewardstack optimize` (and of `optimize`)."""

    policy: str = option("smollm2-135m", "Policy backbone (LoRA is trained on it)")
    selection: str = option("bandit", "bandit, random, ensemble or single:NAME (a member)")
    iterations: int = option(2, "Passes over the prompts")
    batch_prompts: int = option(8, "Prompts per source choice and per optimizer step")
    n: int = option(4, "Samples per prompt")
    pairs_per_prompt: int = option(1, "Pairs of the best response with the next-ranked ones")
    temperature: float = option(0.8, "Sampling temperature")
    max_new_tokens: int = option(64, "Tokens per sampled response at most")
    max_length: int = option(256, "Tokens of prompt + response in the update")
    beta: float = option(0.1, "DPO β")
    nll_weight: float = option(1.0, "Weight of the per-token NLL of the best response")
    learning_rate: float = option(5e-5, "AdamW learning rate")
    lora_r: int = option(16, "LoRA rank of the policy")
    max_prompts: int | None = option(None, "Use only the first N prompts of each data set")
    skip_invalid: bool = option(False, "Count and skip invalid rows instead of stopping at the first")
    seed: int = option(0, "Random seed")
    feedback: str = option("loss", "The bandit's feedback from a prompt's pairs: loss (−L) or gold (mean of correct(chosen) − "
                                   "correct(rejected), by the prompts' answers)")
    backend: str = option("auto", "Sampling engine: transformers, vllm (needs the vllm package and a CUDA GPU; the LoRA policy goes "
                                  "to it as an adapter after each step), or auto: vllm when both are there")
    vllm_gpu_memory_utilization: float = option(0.3, "Share of the GPU's memory vLLM may take; the policy trains beside it")
    compute: ComputeConfig = option(factory=ComputeConfig)

    def sampling(self, n: int, temperature: float, seed: int) -> SamplingConfig:
        return SamplingConfig(n=n, temperature=temperature, max_new_tokens=self.max_new_tokens, seed=seed, backend=self.backend,
                              vllm_gpu_memory_utilization=self.vllm_gpu_memory_utilization)

    def __post_init__(self) -> None:
        self.sampling(2, 0.0, 0)  # checks backend and vllm_gpu_memory_utilization
        for name in ("iterations", "batch_prompts", "pairs_per_prompt", "max_new_tokens", "lora_r"):
            require(self, name, getattr(self, name) >= 1, "at least 1")
        require(self, "n", self.n >= 2, "at least 2 (pairs are built from the samples)")
        require(self, "temperature", 0 <= self.temperature < math.inf, "0 or positive")
        require(self, "max_length", self.max_length >= MIN_MAX_LENGTH, f"at least {MIN_MAX_LENGTH}")
        for name in ("beta", "learning_rate"):
            require(self, name, 0 < getattr(self, name) < math.inf, "a positive number")
        require(self, "nll_weight", 0 <= self.nll_weight < math.inf, "0 or a positive number")
        require(self, "feedback", self.feedback in FEEDBACK, " or ".join(FEEDBACK))
        if self.max_prompts is not None:
            require(self, "max_prompts", self.max_prompts >= 1, "at least 1")

    def check_selection(self, members: Sequence[str]) -> "OptimizeConfig":
        """The config, once `selection` is known to name one of `members` where it names one."""
        kind, _, name = self.selection.partition(":")
        if kind not in ("bandit", "random", "ensemble", "single") or (kind == "single") != bool(name) or (name and name not in members):
            raise UserError(f"optimize: selection must be one of {', '.join(SELECTIONS)} (members: {', '.join(members)}), not {self.selection!r}")
        return self


def optimize(selector, config: OptimizeConfig, prompts: Any, output_dir: str | Path, dev: Any = None, resume: bool = False) -> list[dict]:
    """Iterative DPO of `config.policy` on `prompts` (anything `load_prompts` reads), the reward source
    chosen per batch by `selector` (a BanditSelector: LASeR) or the baseline `config.selection`; greedy
    accuracy on each `dev` set ({name: data} or anything `named_data` takes; rows need an answer) after
    every iteration. Checkpoints and history.jsonl go to `output_dir`. Returns the history."""
    from ..data.load import named_data
    from ..data.pools import load_prompts

    if not isinstance(selector, BanditSelector):
        raise UserError("optimize: the reward must be a bandit (a YAML tree whose root is `kind: bandit`)")
    config.check_selection(selector.names)
    check_output_dir(output_dir, "--output-dir", "optimize", resume)
    train_rows, report = load_prompts(prompts, skip_invalid=config.skip_invalid)
    train_rows = train_rows[: config.max_prompts]
    if config.feedback == "gold" and (missing := [row.key for row in train_rows if row.answer is None]):
        raise UserError(f"{report.source}: --feedback gold needs an `answer` on every training prompt; {len(missing)} have none (first: {missing[0]})")
    dev_sets = {}
    for name, data in (named_data(dev) if dev is not None else {}).items():
        rows = load_prompts(data, skip_invalid=config.skip_invalid)[0][: config.max_prompts]
        if any(row.answer is None for row in rows):
            raise UserError(f"{name}: dev prompts need an `answer` on every row")
        dev_sets[Path(name).name] = rows
    return Optimizer(selector, config, output_dir).run(train_rows, dev_sets, resume=resume)


@contextmanager
def weights_of(model: torch.nn.Module, weights: dict[str, torch.Tensor]):
    """Temporarily load `weights` (a subset of the parameters, by name) into `model`."""
    params = dict(model.named_parameters())
    saved = {name: params[name].detach().clone() for name in weights}
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)
    try:
        yield
    finally:
        with torch.no_grad():
            for name, value in saved.items():
                params[name].copy_(value)


def preference_pairs(prompts: Sequence, responses: Sequence[Sequence[str]], rewards: Sequence[np.ndarray], per_prompt: int) -> tuple[list[PreferencePair], list[int]]:
    """Each prompt's best response over its next `per_prompt` ranked responses with a strictly lower
    reward and a different text; returns the pairs and the index of each pair's prompt."""
    pairs, owners = [], []
    for i, (prompt, texts, values) in enumerate(zip(prompts, responses, rewards)):
        order = np.argsort(-np.asarray(values), kind="stable")
        best = order[0]
        for other in order[1 : 1 + per_prompt]:
            if values[other] < values[best] and texts[other] != texts[best]:
                pairs.append(PreferencePair(as_messages(prompt), texts[best], texts[other]))
                owners.append(i)
    return pairs, owners


def pair_correctness(rows: Sequence[PromptRow], pairs: Sequence[PreferencePair], owners: Sequence[int]) -> list[tuple[bool, bool] | None]:
    """(correct(chosen), correct(rejected)) of each pair by its prompt's answer; None without an answer."""
    return [None if rows[owner].answer is None else (answer_is_correct(pair.chosen, rows[owner].answer), answer_is_correct(pair.rejected, rows[owner].answer))
            for pair, owner in zip(pairs, owners)]


def dev_correct(sample: Callable[[list, SamplingConfig], Samples], rows: Sequence[PromptRow], greedy: SamplingConfig) -> list[int]:
    """1 for each dev prompt whose greedy response (`sample` with `greedy`) has the right answer, else 0."""
    samples = sample([r.prompt for r in rows], greedy)
    return [int(answer_is_correct(texts[0], row.answer)) for texts, row in zip(samples.responses, rows)]


class Optimizer:
    def __init__(self, selector: BanditSelector, config: OptimizeConfig, output_dir: str | Path):
        self.selector, self.config = selector, config.check_selection(selector.names)
        self.output_dir = Path(output_dir)
        torch.manual_seed(config.seed)  # the LoRA initialisation
        self.policy = RewardModel.create(ModelConfig(model=config.policy, max_length=config.max_length, lora_r=config.lora_r, objective="dpo", beta=config.beta))
        self.policy.use(config.compute)
        self.trainable = {name: p for name, p in self.policy.named_parameters() if p.requires_grad}
        self.optimizer = torch.optim.AdamW(self.trainable.values(), lr=config.learning_rate)
        first = config.sampling(config.n, config.temperature, config.seed)
        self.vllm = VllmSampler(config.policy, first, config.lora_r) if generation_backend(config.backend) == "vllm" else None
        self.ensemble = Ensemble(selector.members, "mean")
        self.pair_records: list[dict] = []  # the current iteration's pairs

    def run(self, prompts: Sequence[PromptRow], dev: dict[str, Sequence[PromptRow]], resume: bool = False) -> list[dict]:
        run_config = {k: v for k, v in asdict(self.config).items() if k != "iterations"}  # more iterations may follow
        check_output_dir(self.output_dir, "--output-dir", "optimize", resume)
        if resume:
            check_same_run(self.output_dir, run_config)
            history = self._resume()
        else:
            if (self.output_dir / "history.jsonl").exists():
                raise UserError(f"{self.output_dir}: has a run already; pass --resume to continue it or choose another --output-dir")
            mark_output_dir(self.output_dir, "optimize")
            write_text(self.output_dir / "config.yaml", yaml.safe_dump(run_config, sort_keys=False))
            history = []
        if not history:
            history.append(self._evaluate(0, dev, {"seconds": 0.0, "batches": 0, "pairs": 0, "skipped_batches": 0, "arms": {}}))
            self._checkpoint(history[-1])
        for iteration in range(len(history), self.config.iterations + 1):
            history.append(self._evaluate(iteration, dev, self._iteration(iteration, prompts)))
            self._checkpoint(history[-1])
        return history

    def sample(self, prompts: list, sampling: SamplingConfig) -> Samples:
        """Responses of the current policy: in this process, or through vLLM with the adapter as it is now."""
        if self.vllm is None:
            return sample_responses(self.policy.backbone, self.policy.tokenizer, prompts, sampling)
        adapter = self.output_dir / "vllm-adapter"
        self.policy.backbone.save_pretrained(adapter)
        return self.vllm.sample(prompts, sampling, adapter)

    def _iteration(self, iteration: int, prompts: Sequence[PromptRow]) -> dict:
        start = time.perf_counter()
        self.rng = np.random.default_rng([self.config.seed, iteration])  # random selection, reproducible on resume
        reference = {name: p.detach().clone() for name, p in self.trainable.items()}
        order = np.random.default_rng(self.config.seed + iteration).permutation(len(prompts))
        batches = [order[i : i + self.config.batch_prompts] for i in range(0, len(order), self.config.batch_prompts)]
        stats = {"batches": len(batches), "pairs": 0, "skipped_batches": 0, "arms": {}, "arms_by_group": {}, "gold_pairs": {}, "losses": []}
        self.pair_records = []
        for b, batch in enumerate(batches):
            rows = [prompts[i] for i in batch]
            prompts_b = [r.prompt for r in rows]
            names, contexts, arms = self._choose(prompts_b)
            for row, name in zip(rows, names):
                stats["arms"][name] = stats["arms"].get(name, 0) + 1
                by_group = stats["arms_by_group"].setdefault(row.group or "all", {})
                by_group[name] = by_group.get(name, 0) + 1
            sampling = self.config.sampling(self.config.n, self.config.temperature, self.config.seed + 1000 * iteration + 100_000 * b)
            responses = self.sample(prompts_b, sampling).responses
            rewards = self._score(prompts_b, responses, names)
            pairs, owners = preference_pairs(prompts_b, responses, rewards, self.config.pairs_per_prompt)
            if not pairs:
                stats["skipped_batches"] += 1
                continue
            losses = self._step(pairs, reference)
            correctness = pair_correctness(rows, pairs, owners)
            self._record_pairs(stats, iteration, rows, names, pairs, owners, losses, correctness)
            stats["pairs"] += len(pairs)
            stats["losses"].append(float(losses.mean()))
            if arms is not None:
                values = np.array([float(c) - float(r) for c, r in correctness]) if self.config.feedback == "gold" else -losses
                self._feedback(prompts_b, contexts, arms, values, np.array(owners))
        stats["seconds"] = time.perf_counter() - start
        stats["mean_loss"] = float(np.mean(stats.pop("losses"))) if stats["pairs"] else None
        return stats

    def _record_pairs(self, stats: dict, iteration: int, rows: list[PromptRow], names: list[str], pairs: list[PreferencePair], owners: list[int],
                      losses: np.ndarray, correctness: list[tuple[bool, bool] | None]) -> None:
        """Keep each pair for iter-M/pairs.jsonl; for prompts with an answer, count per source the pairs
        whose chosen response is right and rejected wrong (`agree`), the reverse (`disagree`), or neither."""
        for pair, owner, loss, correct in zip(pairs, owners, losses, correctness):
            record = {"iteration": iteration, "id": rows[owner].key, "group": rows[owner].group, "source": names[owner],
                      "chosen": pair.chosen, "rejected": pair.rejected, "loss": float(loss)}
            if correct is not None:
                record["chosen_correct"], record["rejected_correct"] = correct
                verdict = "agree" if correct[0] > correct[1] else "disagree" if correct[0] < correct[1] else "neither"
                counts = stats["gold_pairs"].setdefault(names[owner], {"agree": 0, "disagree": 0, "neither": 0})
                counts[verdict] += 1
            self.pair_records.append(record)

    def _choose(self, prompts: list) -> tuple[list[str], np.ndarray | None, list[int] | None]:
        """Source name per prompt, and for the bandit its contexts and arms (None otherwise)."""
        kind, _, member = self.config.selection.partition(":")
        if kind in ("single", "ensemble"):
            return [member or "ensemble"] * len(prompts), None, None
        if kind == "random":
            count = len(prompts) if self.selector.per == "instance" else 1
            arms = self.rng.integers(len(self.selector.names), size=count)
            return [self.selector.names[a] for a in np.resize(arms, len(prompts))], None, None
        contexts, arms = self.selector.select(prompts)
        return [self.selector.names[a] for a in arms], contexts, arms

    def _score(self, prompts: list, responses: list[list[str]], names: list[str]) -> list[np.ndarray]:
        """Each prompt's n rewards from its own source."""
        sources = {**self.selector.members, "ensemble": self.ensemble}
        flat = score_assigned(sources, [name for name, texts in zip(names, responses) for _ in texts],
                              [p for p, texts in zip(prompts, responses) for _ in texts], [t for texts in responses for t in texts]).mean
        return [flat[i * self.config.n : (i + 1) * self.config.n] for i in range(len(prompts))]

    def _feedback(self, prompts: list, contexts: np.ndarray, arms: list[int], values: np.ndarray, owners: np.ndarray) -> None:
        """The mean of the pairs' feedback values to the bandit: per prompt over its own pairs, or once per
        batch over all of them."""
        if self.selector.per == "batch":
            self.selector.feedback(contexts[0], arms[0], float(values.mean()))
            return
        for i in np.unique(owners):
            self.selector.feedback(contexts[i], arms[i], float(values[owners == i].mean()), prompts[i])

    def _step(self, pairs: list[PreferencePair], reference: dict[str, torch.Tensor]) -> np.ndarray:
        """One AdamW step on the mean of the pairs' losses; returns each pair's loss."""
        batch = collate_pairs(encode_pairs(self.policy.encoder, pairs), list(range(len(pairs))), self.policy.tokenizer.pad_token_id,
                              self.policy.compute)
        batch = batch.to(self.policy.head.weight.device)
        n = len(pairs)
        with torch.no_grad(), weights_of(self.policy, reference):
            ref_logps = self.policy(batch.packed, logprobs=True)[1]
        self.policy.train()
        logps = self.policy(batch.packed, logprobs=True)[1]
        lengths = batch.response_lengths[:n].clamp(min=1)
        losses = policy_loss(logps[:n], logps[n:], ref_logps[:n], ref_logps[n:], self.config.beta) \
            + self.config.nll_weight * (-logps[:n] / lengths)
        self.optimizer.zero_grad()
        losses.mean().backward()
        self.optimizer.step()
        self.policy.eval()
        return losses.detach().cpu().numpy()

    def _evaluate(self, iteration: int, dev: dict[str, Sequence[PromptRow]], stats: dict) -> dict:
        greedy = self.config.sampling(1, 0.0, self.config.seed)
        correct = {name: dev_correct(self.sample, rows, greedy) for name, rows in dev.items()}
        accuracy = {name: float(np.mean(values)) for name, values in correct.items()}
        return {"iteration": iteration, "accuracy": accuracy, "dev_correct": correct, **stats, "bandit_counts": self.selector.arm_counts()}

    def _checkpoint(self, record: dict) -> None:
        directory = self.output_dir / f"iter-{record['iteration']}"
        self.policy.backbone.save_pretrained(directory / "adapter")
        if record["iteration"] > 0:
            write_text(directory / "pairs.jsonl", "".join(json.dumps(r) + "\n" for r in self.pair_records))
        with atomic_path(directory / "optimizer.pt") as temporary:
            torch.save(self.optimizer.state_dict(), temporary)
        self.selector.save(directory / "bandit_state.safetensors")
        write_json(directory / "metrics.json", record)
        with open(self.output_dir / "history.jsonl", "a") as handle:
            handle.write(json.dumps(record) + "\n")

    def _resume(self) -> list[dict]:
        history_path = self.output_dir / "history.jsonl"
        if not history_path.exists():  # stopped before its first checkpoint
            return []
        history = [json.loads(line) for line in history_path.read_text().splitlines() if line]
        directory = self.output_dir / f"iter-{history[-1]['iteration']}"
        set_peft_model_state_dict(self.policy.backbone, load_tensors(directory / "adapter" / "adapter_model.safetensors"))
        self.optimizer.load_state_dict(load_torch(directory / "optimizer.pt"))
        self.selector.load_state(directory / "bandit_state.safetensors")
        return history
