"""Sampling speed: rewardstack's sampler against transformers' `generate` on the same prompts and policy.

Work: --prompts arithmetic word problems (rewardstack.synthetic.word_problems, seed 3), chat template
applied, n samples each of at most --max-new-tokens at temperature 0.8 (top-k off), from SmolLM2-135M-Instruct
plain and with a fresh LoRA r=16 adapter (what `rewardstack optimize` samples from). Ways:
  ours            sample_responses, 64 sequences per batch (prompt KV cache shared by its n samples)
  ours 1/batch    sample_responses, one prompt per batch
  generate        model.generate on all prompts at once (left-padded, num_return_sequences=n)
  generate 1/call model.generate per prompt
Also the share of prompts whose greedy response (n = 1) equals generate's.

    python bench/sampling_speed.py [--prompts 16] [--n 4] [--max-new-tokens 48]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch
from peft import LoraConfig, get_peft_model

from rewardstack.backbones import load_backbone
from rewardstack.data.encode import as_messages
from rewardstack.sampling import SamplingConfig, sample_responses
from rewardstack.synthetic import word_problems


def generate(policy, tokenizer, texts: list[str], n: int, max_new_tokens: int, temperature: float) -> list[str]:
    """transformers' generate on left-padded prompts; n responses per prompt, decoded like ours."""
    tokenizer.padding_side = "left"
    batch = tokenizer(texts, padding=True, add_special_tokens=False, return_tensors="pt")
    sampling = {"do_sample": True, "temperature": temperature, "top_k": 0} if temperature > 0 else {"do_sample": False}
    with torch.no_grad():
        out = policy.generate(**batch, num_return_sequences=n, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                              eos_token_id=tokenizer.eos_token_id, **sampling)
    return [tokenizer.decode(row, skip_special_tokens=True).strip() for row in out[:, batch["input_ids"].shape[1]:]]


def timed(run) -> tuple[float, list]:
    started = time.perf_counter()
    result = run()
    return time.perf_counter() - started, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    args = parser.parse_args()
    policy, tokenizer = load_backbone("smollm2-135m")
    prompts = [as_messages(row["prompt"]) for row in word_problems(args.prompts, seed=3)]
    texts = [tokenizer.apply_chat_template(list(p), tokenize=False, add_generation_prompt=True) for p in prompts]
    config = SamplingConfig(n=args.n, temperature=0.8, max_new_tokens=args.max_new_tokens)
    torch.manual_seed(0)
    policies = {"plain": policy, "LoRA r=16": get_peft_model(load_backbone("smollm2-135m")[0], LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))}
    print(f"{args.prompts} prompts × n={args.n}, ≤ {args.max_new_tokens} new tokens, temperature 0.8; seconds (generate's time / this way's)")
    widths = (17, 17, 17, 18)
    print(f"{'policy':<11}" + "".join(f"{way:>{w}}" for way, w in zip(("ours", "ours 1/batch", "generate", "generate 1/call"), widths)))
    for name, model in policies.items():
        ways = {
            "ours": lambda: sample_responses(model, tokenizer, prompts, config),
            "ours 1/batch": lambda: sample_responses(model, tokenizer, prompts, replace(config, generation_batch_size=args.n)),
            "generate": lambda: generate(model, tokenizer, texts, args.n, args.max_new_tokens, 0.8),
            "generate 1/call": lambda: [generate(model, tokenizer, [t], args.n, args.max_new_tokens, 0.8) for t in texts],
        }
        seconds = {way: timed(run)[0] for way, run in ways.items()}
        cells = [f"{s:.1f} s ({seconds['generate'] / s:.2f}x)" for s in seconds.values()]
        print(f"{name:<11}" + "".join(f"{c:>{w}}" for c, w in zip(cells, widths)))
    greedy = sample_responses(policy, tokenizer, prompts, SamplingConfig(n=1, temperature=0, max_new_tokens=args.max_new_tokens)).responses
    reference = generate(policy, tokenizer, texts, 1, args.max_new_tokens, 0)
    print(f"greedy responses equal to generate's: {sum(g[0] == r for g, r in zip(greedy, reference))}/{len(prompts)}")


if __name__ == "__main__":
    main()
