"""LASeR: a contextual bandit picks, per prompt or per call, which member source gives the reward.

Only the chosen member scores a row, so a bandit over K sources costs about one source's scoring.
Feedback (`feedback(context, arm, raw)`) is normalised by running percentiles (PercentileNormalizer) and
updates the bandit; every choice is logged with its context id (a hash of the prompt). The state
(bandit statistics, normaliser history, random generator, step count) saves to and loads from one
safetensors file.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from safetensors.torch import save_file

from ..sources.kinds import Place, members, number, register_kind
from .bandits import PercentileNormalizer, make_bandit
from ..data.encode import prompt_key
from ..errors import UserError
from ..files import atomic_path, load_tensors
from ..scores import RewardScores

PER = ("instance", "batch")


def context_id(prompt) -> str:
    return hashlib.sha256(prompt_key(prompt).encode()).hexdigest()[:12]


def score_assigned(sources: dict[str, object], assigned: Sequence[str], prompts, responses, batch_size: int = 16) -> RewardScores:
    """Row i scored by sources[assigned[i]], all rows of one source in one call; std only when every
    row's source gives one."""
    mean, std, truncated = np.empty(len(prompts)), np.full(len(prompts), np.nan), 0
    for name in dict.fromkeys(assigned):
        rows = np.flatnonzero(np.asarray(assigned) == name)
        scores = sources[name].score([prompts[i] for i in rows], [responses[i] for i in rows], batch_size=batch_size)
        mean[rows], truncated = scores.mean, truncated + scores.truncated
        if scores.std is not None:
            std[rows] = scores.std
    return RewardScores(mean=mean, std=None if np.isnan(std).any() else std, truncated=truncated)


class BanditSelector:
    def __init__(self, members: dict[str, object], context, algorithm: str = "linucb", per: str = "instance",
                 seed: int = 0, state_path: str | Path | None = None, **params: float):
        if len(members) < 2:
            raise UserError("bandit: needs at least two members to choose from")
        if per not in PER:
            raise UserError(f"bandit: per must be one of {', '.join(PER)}, not {per!r}")
        self.members, self.names = members, list(members)
        self.context, self.per, self.algorithm = context, per, algorithm
        self.bandit = make_bandit(algorithm, len(members), context.dim, seed=seed, **params)
        self.normalizer = PercentileNormalizer()
        self.log: list[dict] = []
        self.state_path = Path(state_path) if state_path else None
        if self.state_path is not None and self.state_path.exists():
            self.load_state(self.state_path)

    def children(self) -> list:
        return list(self.members.values())

    def select(self, prompts: Sequence) -> tuple[np.ndarray, list[int]]:
        """Contexts of `prompts` and one arm per prompt (per instance) or the same arm for all (per batch)."""
        if self.per == "batch":
            context, arm = self.select_batch(prompts)
            return np.repeat(context[None], len(prompts), axis=0), [arm] * len(prompts)
        contexts = self.context.encode(prompts)
        return contexts, [self.bandit.select(x) for x in contexts]

    def select_batch(self, prompts: Sequence) -> tuple[np.ndarray, int]:
        """One arm for all `prompts`, chosen on their mean context; returns (that context, the arm)."""
        context = self.batch_contexts([prompts])[0]
        return context, self.bandit.select(context)

    def batch_contexts(self, batches: Sequence[Sequence]) -> np.ndarray:
        """The mean context of each batch of prompts (a one-prompt batch: that prompt's context), all
        prompts encoded in one call."""
        contexts = self.context.encode([p for batch in batches for p in batch])
        ends = np.cumsum([len(batch) for batch in batches])
        return np.stack([part.mean(axis=0) for part in np.split(contexts, ends[:-1])])

    def feedback(self, context: np.ndarray, arm: int, raw: float, prompt=None) -> float:
        """Update the bandit with a raw feedback value; returns the normalised reward in [0, 1]."""
        reward = self.normalizer(raw)
        self.bandit.update(context, arm, reward)
        self.log.append({"step": self.steps - 1, "context_id": None if prompt is None else context_id(prompt),
                         "arm": self.names[arm], "feedback": float(raw), "reward": reward})
        return reward

    @property
    def steps(self) -> int:
        """Feedback rounds learned from, those of a loaded state included."""
        return len(self.normalizer.history)

    def score(self, prompts, responses, batch_size: int = 16) -> RewardScores:
        """Each distinct prompt's rows scored by the member the bandit picks for it; `arm` = that member's index."""
        by_prompt: dict[str, list[int]] = defaultdict(list)
        for i, prompt in enumerate(prompts):
            by_prompt[prompt_key(prompt)].append(i)
        firsts = [prompts[rows[0]] for rows in by_prompt.values()]
        _, arms = self.select(firsts)
        arm_of_row = np.empty(len(prompts), dtype=np.int64)
        for arm, rows in zip(arms, by_prompt.values()):
            arm_of_row[rows] = arm
        scores = score_assigned(self.members, [self.names[a] for a in arm_of_row], prompts, responses, batch_size)
        scores.arm = arm_of_row
        return scores

    def save(self, path: str | Path | None = None) -> Path:
        """Save the state (`save_state`) and append the feedback logged since the last save to
        bandit_log.jsonl beside it, then clear the in-memory log: how `bon`, the server and `optimize`
        keep a bandit."""
        path = self.save_state(path)
        with open(path.parent / "bandit_log.jsonl", "a") as handle:
            handle.writelines(json.dumps(entry) + "\n" for entry in self.log)
        self.log.clear()
        return path

    def save_state(self, path: str | Path | None = None) -> Path:
        """The bandit's statistics, normaliser history and RNG, written atomically to `path` (default:
        its state_path, else bandit_state.safetensors)."""
        path = Path(path or self.state_path or "bandit_state.safetensors")
        tensors = {f"bandit.{k}": torch.from_numpy(np.ascontiguousarray(v)) for k, v in self.bandit.state().items()}
        tensors["normalizer.history"] = torch.from_numpy(self.normalizer.history.copy())
        meta = {"algorithm": self.algorithm, "members": json.dumps(self.names), "dim": str(self.context.dim), "steps": str(self.steps),
                "rng": json.dumps(self.bandit.rng.bit_generator.state)}  # randomised choices continue as if never stopped
        with atomic_path(path) as temporary:  # a crash while writing leaves the old state intact
            save_file(tensors, temporary, metadata=meta)
        return path

    def load_state(self, path: str | Path) -> None:
        from safetensors import safe_open

        try:
            with safe_open(str(path), "pt") as handle:
                meta = handle.metadata() or {}
        except Exception as err:  # a truncated or corrupt file
            raise UserError(f"{path}: not a readable bandit state ({err}); delete it to start the bandit afresh") from None
        if meta.get("algorithm") != self.algorithm or json.loads(meta.get("members", "[]")) != self.names:
            raise UserError(f"{path}: bandit state of {meta.get('algorithm')} over {meta.get('members')}, "
                            f"not {self.algorithm} over {self.names}")
        tensors = load_tensors(path)
        self.bandit.load_state({k.removeprefix("bandit."): v.numpy() for k, v in tensors.items() if k.startswith("bandit.")})
        self.normalizer.history = tensors["normalizer.history"].numpy().copy()
        if "rng" in meta:
            self.bandit.rng.bit_generator.state = json.loads(meta["rng"])

    def arm_counts(self) -> dict[str, int]:
        return {name: int(count) for name, count in zip(self.names, self.bandit.counts)}


@register_kind("bandit")
def _build_bandit(node: dict, place: Place) -> BanditSelector:
    from .context import ContextEncoder

    context, params = node.get("context") or {}, node.get("params") or {}
    if not isinstance(context, dict) or not isinstance(params, dict):
        raise UserError(f"{place.where}: `context` and `params` are mappings")
    seed = int(node.get("seed", 0))
    encoder = ContextEncoder(str(context.get("kind", "policy")), str(context.get("model", "smollm2-135m")), context.get("dim", 64), seed)
    state = place.base_dir / node["state"] if node.get("state") else None
    return BanditSelector(members(node, place), encoder, str(node.get("algorithm", "linucb")), str(node.get("per", "instance")), seed, state,
                          **{k: number(params, k, f"{place.where}.params") for k in params})
