"""Sampling n responses per prompt from a policy (any causal LM the backbones module can load).

Each prompt is run through the model once; its KV cache is then copied n times and the n samples
continue from it, so the prompt costs one forward pass however many samples it gets. Every prompt draws
from its own seeded generator (seed + prompt index): the samples of a prompt do not depend on the others.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import DynamicCache

from .backbones import load_backbone
from .data.load import Message
from .data.pools import Pool, PromptRow
from .errors import UserError
from .gold import answer_is_correct


@dataclass
class SamplingConfig:
    n: int = 8  # samples per prompt
    temperature: float = 0.7  # 0 = greedy
    top_p: float = 1.0
    max_new_tokens: int = 256
    seed: int = 0

    def validate(self) -> "SamplingConfig":
        if self.n < 1 or self.max_new_tokens < 1:
            raise UserError("sampling: n and max_new_tokens must be at least 1")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise UserError("sampling: temperature must be ≥ 0 and top_p in (0, 1]")
        return self


@dataclass
class Samples:
    """responses[i]: the n responses to prompt i; `unfinished` counts responses cut at max_new_tokens."""

    responses: list[list[str]]
    unfinished: int


@torch.no_grad()
def sample_responses(policy, tokenizer, prompts: Sequence[Sequence[Message]], config: SamplingConfig) -> Samples:
    """n responses per prompt (chat template applied), decoded without special tokens."""
    config.validate()
    policy.eval()
    device = next(policy.parameters()).device
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    responses, unfinished = [], 0
    for index, prompt in enumerate(tqdm(prompts, desc="sample", disable=len(prompts) < 2)):
        text = tokenizer.apply_chat_template(list(prompt), tokenize=False, add_generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"].to(device)
        cache = DynamicCache(config=policy.config)
        if ids.shape[1] > 1:
            policy(input_ids=ids[:, :-1], past_key_values=cache, use_cache=True)
            cache.batch_repeat_interleave(config.n)
        generator_seed = config.seed + index
        torch.manual_seed(generator_seed)
        sampling = {"do_sample": True, "temperature": config.temperature, "top_p": config.top_p} if config.temperature > 0 else {"do_sample": False}
        out = policy.generate(
            input_ids=ids.repeat(config.n, 1),
            attention_mask=torch.ones(config.n, ids.shape[1], dtype=torch.long, device=device),
            past_key_values=cache if ids.shape[1] > 1 else None,
            max_new_tokens=config.max_new_tokens,
            pad_token_id=pad,
            eos_token_id=eos,
            **sampling,
        )
        new = out[:, ids.shape[1] :]
        unfinished += int((new != eos).all(dim=1).sum()) if eos is not None else len(new)
        responses.append([tokenizer.decode(_until_eos(row, eos, pad), skip_special_tokens=True).strip() for row in new])
    return Samples(responses, unfinished)


def sample_pools(policy_name: str, prompts: Sequence[PromptRow], config: SamplingConfig) -> tuple[list[Pool], int]:
    """Candidate pools sampled from the policy `policy_name` (a backbone name, path or id); a prompt row's
    `answer` gives each response its gold: 1 when its final answer matches. Returns (pools, unfinished)."""
    policy, tokenizer = load_backbone(policy_name)
    samples = sample_responses(policy, tokenizer, [row.prompt for row in prompts], config)
    pools = []
    for row, responses in zip(prompts, samples.responses):
        gold = None if row.answer is None else np.array([float(answer_is_correct(r, row.answer)) for r in responses])
        pools.append(Pool(row.key, row.prompt, responses, [str(i) for i in range(len(responses))], gold))
    return pools, samples.unfinished


def _until_eos(row: torch.Tensor, eos: int | None, pad: int) -> torch.Tensor:
    """The tokens before the first end-of-sequence, padding removed."""
    stop = (row == eos).nonzero() if eos is not None else []
    row = row[: int(stop[0])] if len(stop) else row
    return row[row != pad]
