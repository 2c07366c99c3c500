"""Exported model against rewardstack: export a trained model (rewardstack export), then score held-out
pairs two ways, with rewardstack and with the plain Transformers pipeline a user of the exported folder
runs (apply_chat_template, the tokenizer without extra special tokens, the model's pooled logit); print
the largest difference and both pair accuracies.

    python bench/export_check.py --model-dir runs/demo/run/model --pairs runs/demo/data/test_pairs.jsonl --output runs/demo-hf
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from rewardstack.data.encode import as_messages
from rewardstack.export import export_model
from rewardstack.model import RewardModel


def transformers_rewards(folder: Path, conversations: list[list[dict]]) -> np.ndarray:
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    rewards = []
    with torch.no_grad():
        for conversation in conversations:
            text = tokenizer.apply_chat_template(conversation, tokenize=False)
            rewards.append(model(**tokenizer(text, return_tensors="pt", add_special_tokens=False)).logits[0, 0].item())
    return np.array(rewards)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--pairs", type=Path, required=True, help="prompt/chosen/rejected rows (strings or messages)")
    parser.add_argument("--output", type=Path, required=True, help="the export folder (new)")
    parser.add_argument("--max-pairs", type=int, default=40)
    args = parser.parse_args()
    rows = [json.loads(line) for line in args.pairs.read_text().splitlines() if line][: args.max_pairs]
    started = time.perf_counter()
    export_model(args.model_dir, args.output)
    print(f"export {time.perf_counter() - started:.1f} s")
    ours_model = RewardModel.from_pretrained(args.model_dir)
    ours_model.posterior = None
    prompts = [list(as_messages(r["prompt"])) for r in rows] * 2
    responses = [r["chosen"] for r in rows] + [r["rejected"] for r in rows]
    ours = ours_model.score(prompts, responses).mean
    theirs = transformers_rewards(args.output, [p + [{"role": "assistant", "content": r}] for p, r in zip(prompts, responses)])
    n = len(rows)
    print(f"{len(ours)} responses; rewards {ours.min():.3f} .. {ours.max():.3f}; max |rewardstack − transformers| = {np.abs(ours - theirs).max():.2e}")
    print(f"pair accuracy: rewardstack {np.mean(ours[:n] > ours[n:]):.3f}, transformers {np.mean(theirs[:n] > theirs[n:]):.3f}")


if __name__ == "__main__":
    main()
