"""Sampling n responses per prompt from a policy (any causal LM the backbones module can load).

Prompts are generated in batches (left-padded, `generation_batch_size` sequences at a time). Each prompt is run
through the model once; its KV cache is then copied n times and the n samples continue from it, so the
prompt costs one forward pass however many samples it gets. Next tokens come from softmax(logits / T),
cut to the smallest set of tokens whose probability reaches top_p; T = 0 is greedy. Prompt i draws from
its own generator seeded with seed + i, so its samples do not depend on the other prompts in its batch
(up to float rounding from padding).
"""

from __future__ import annotations

import importlib.util
import inspect
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import DynamicCache

from .backbones import backbone_folder, load_backbone, resolve_device
from .data.load import Message
from .data.pools import Pool, PromptRow
from .errors import UserError, require
from .gold import answer_is_correct
from .options import option


BACKENDS = ("auto", "transformers", "vllm")


@dataclass
class SamplingConfig:
    """How responses are sampled from a policy."""

    n: int = option(8, "Samples per prompt")
    temperature: float = option(0.7, "Sampling temperature; 0 = greedy")
    top_p: float = option(1.0, "Nucleus sampling threshold, in (0, 1]")
    max_new_tokens: int = option(256, "Tokens per sampled response at most")
    seed: int = option(0, "Sampling seed (prompt i uses seed + i)")
    generation_batch_size: int = option(64, "Sequences generated together: generation_batch_size // n prompts (at least one)")
    backend: str = option("auto", "Generation engine: transformers, vllm (needs the vllm package and a CUDA GPU), or auto: vllm "
                                  "when both are there")
    vllm_gpu_memory_utilization: float = option(0.3, "Share of the GPU's memory vLLM may take (weights and KV cache)")

    def __post_init__(self) -> None:
        for name in ("n", "max_new_tokens", "generation_batch_size"):
            require(self, name, getattr(self, name) >= 1, "at least 1")
        require(self, "temperature", 0 <= self.temperature < math.inf, "0 (greedy) or positive")
        require(self, "top_p", 0 < self.top_p <= 1, "in (0, 1]")
        require(self, "backend", self.backend in BACKENDS, f"one of {', '.join(BACKENDS)}")
        require(self, "vllm_gpu_memory_utilization", 0 < self.vllm_gpu_memory_utilization <= 1, "in (0, 1]")


@dataclass
class Samples:
    """responses[i]: the n responses to prompt i; `unfinished` counts responses cut at max_new_tokens."""

    responses: list[list[str]]
    unfinished: int


@torch.no_grad()
def sample_responses(policy, tokenizer, prompts: Sequence[Sequence[Message]], config: SamplingConfig) -> Samples:
    """n responses per prompt (chat template applied), decoded without special tokens."""
    policy.eval()
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    per_batch = max(1, config.generation_batch_size // config.n)
    responses, unfinished = [], 0
    for first in tqdm(range(0, len(prompts), per_batch), desc="sample", disable=len(prompts) <= per_batch):
        texts = [render_chat(tokenizer, p) for p in prompts[first : first + per_batch]]
        tokens = _generate(policy, [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts], config, first, eos, pad)
        unfinished += int((tokens != eos).all(dim=1).sum()) if eos is not None else len(tokens)
        decoded = [tokenizer.decode(_until_eos(row, eos, pad), skip_special_tokens=True).strip() for row in tokens]
        responses += [decoded[i : i + config.n] for i in range(0, len(decoded), config.n)]
    return Samples(responses, unfinished)


def cache_keyword(policy) -> str:
    """The forward keyword of the KV cache: `cache` in newer transformers, `past_key_values` before."""
    model = policy.get_base_model() if hasattr(policy, "get_base_model") else policy
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _generate(policy, prompt_ids: list[list[int]], config: SamplingConfig, first_index: int, eos: int | None, pad: int) -> torch.Tensor:
    """New tokens [len(prompt_ids) · n, ≤ max_new_tokens] (rows of a prompt adjacent, `pad` after eos)
    for left-padded prompts whose KV caches are computed once and repeated n times."""
    device = next(policy.parameters()).device
    width = max(len(ids) for ids in prompt_ids)
    ids = torch.tensor([[pad] * (width - len(x)) + x for x in prompt_ids], device=device)
    mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in prompt_ids], device=device)
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    cache = DynamicCache(config=policy.config)
    keyword = cache_keyword(policy)
    logits = policy(input_ids=ids, attention_mask=mask, position_ids=positions, **{keyword: cache}, use_cache=True, logits_to_keep=1).logits[:, -1]
    n = config.n
    cache.batch_repeat_interleave(n)
    logits, mask, position = logits.repeat_interleave(n, 0), mask.repeat_interleave(n, 0), positions[:, -1].repeat_interleave(n)
    generators = [torch.Generator(device=device).manual_seed(config.seed + first_index + i) for i in range(len(prompt_ids))]
    done = torch.zeros(len(logits), dtype=torch.bool, device=device)
    new = []
    for _ in range(config.max_new_tokens):
        token = torch.where(done, pad, _next_tokens(logits.float(), config, generators))
        new.append(token)
        done |= token == eos
        if done.all():
            break
        mask, position = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1), position + 1
        logits = policy(input_ids=token[:, None], attention_mask=mask, position_ids=position[:, None], **{keyword: cache}, use_cache=True).logits[:, -1]
    return torch.stack(new, dim=1)


def _next_tokens(logits: torch.Tensor, config: SamplingConfig, generators: list[torch.Generator]) -> torch.Tensor:
    """Greedy at T = 0; else a draw from the top-p nucleus of softmax(logits / T), rows of prompt i
    (n adjacent rows) from generators[i]."""
    if config.temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits / config.temperature, dim=-1)
    if config.top_p < 1:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        outside = sorted_probs.cumsum(-1) - sorted_probs >= config.top_p  # mass before the token already reaches top_p
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs.masked_fill(outside, 0))
    rows = probs.split(config.n)
    return torch.cat([torch.multinomial(row, 1, generator=g)[:, 0] for row, g in zip(rows, generators)])


def generation_backend(requested: str) -> str:
    """The engine that samples: `vllm` when asked for, or for `auto` when the vllm package and a CUDA GPU
    are both there; `transformers` otherwise. Asking for vllm without either is an error naming which."""
    if requested == "transformers":
        return requested
    has_vllm, has_gpu = importlib.util.find_spec("vllm") is not None, torch.cuda.is_available()
    if requested == "auto":
        return "vllm" if has_vllm and has_gpu else "transformers"
    if not has_vllm:
        raise UserError("backend vllm: the vllm package is not installed (pip install vllm, on a machine with a CUDA GPU); "
                        "or sample with backend transformers")
    if not has_gpu:
        raise UserError("backend vllm: no CUDA GPU is visible, and vLLM samples on GPUs: use backend transformers")
    return "vllm"


class VllmSampler:
    """Samples through a vLLM engine on `base` (a backbone name, folder or Hub id). A LoRA policy trained
    elsewhere rides along as an adapter folder per call, so the engine never reloads the base weights.
    Prompts are rendered by the same chat template as sample_responses, and prompt i draws with seed
    config.seed + i, as there."""

    def __init__(self, base: str, config: SamplingConfig, lora_rank: int = 0):
        from vllm import LLM

        self.llm = LLM(model=str(backbone_folder(base)), seed=config.seed, gpu_memory_utilization=config.vllm_gpu_memory_utilization,
                       enable_lora=lora_rank > 0, max_lora_rank=max(8, 1 << (lora_rank - 1).bit_length()))  # vLLM takes powers of 2
        self.tokenizer = self.llm.get_tokenizer()
        self.adapters = 0  # a changed adapter needs a new id: vLLM keeps loaded adapters by id

    def sample(self, prompts: Sequence[Sequence[Message]], config: SamplingConfig, adapter: Path | None = None) -> Samples:
        from vllm import SamplingParams

        lora = None
        if adapter is not None:
            from vllm.lora.request import LoRARequest

            self.adapters += 1
            lora = LoRARequest(f"policy-{self.adapters}", self.adapters, str(adapter))
        token_prompts = [{"prompt_token_ids": self.tokenizer(render_chat(self.tokenizer, p), add_special_tokens=False)["input_ids"]} for p in prompts]
        params = [SamplingParams(n=config.n, temperature=config.temperature, top_p=config.top_p, max_tokens=config.max_new_tokens,
                                 seed=config.seed + i) for i in range(len(prompts))]
        outputs = self.llm.generate(token_prompts, params, use_tqdm=False, lora_request=lora)
        return Samples([[c.text.strip() for c in out.outputs] for out in outputs],
                       sum(c.finish_reason == "length" for out in outputs for c in out.outputs))


def render_chat(tokenizer, prompt: Sequence[Message]) -> str:
    """The prompt as the policy sees it: its chat template with the assistant's turn opened."""
    return tokenizer.apply_chat_template(list(prompt), tokenize=False, add_generation_prompt=True)


def sample_pools(policy_name: str, prompts: Sequence[PromptRow], config: SamplingConfig, device: str = "auto") -> tuple[list[Pool], int]:
    """Candidate pools sampled from the policy `policy_name` (a backbone name, path or id) on `device`,
    through config.backend's engine; a prompt row's `answer` gives each response its gold: 1 when its final
    answer matches. Returns (pools, unfinished)."""
    if generation_backend(config.backend) == "vllm":
        samples = VllmSampler(policy_name, config).sample([row.prompt for row in prompts], config)
    else:
        policy, tokenizer = load_backbone(policy_name)
        policy.to(resolve_device(device))
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
