"""The main job on the embedded default: generated arithmetic pairs → reward model → evaluation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .config import TrainConfig
from .data.load import Columns
from .evaluate import evaluate, format_table
from .model import RewardModel
from .synthetic import arithmetic_pairs, write_jsonl
from .train import train


def run_demo(output_dir: str | Path, model: str = "smollm2-135m", train_pairs: int = 256, seed: int = 0) -> dict:
    """Write generated train/test pairs, train a LoRA reward model for one epoch, reload it from disk,
    evaluate it on the held-out pairs (per failure kind) and print a table.
    Returns the evaluation results (also in output_dir/eval.json)."""
    output_dir = Path(output_dir)
    train_file = write_jsonl(arithmetic_pairs(train_pairs, seed=seed), output_dir / "data" / "train.jsonl")
    test_file = write_jsonl(arithmetic_pairs(train_pairs // 2, seed=seed + 1), output_dir / "data" / "test.jsonl")
    config = TrainConfig(
        model=model, max_length=128, lora_r=16, epochs=1, batch_size=8, learning_rate=5e-4, seed=seed,
        columns=Columns(),
    ).validate()
    run_dir = output_dir / "run"
    print(f"demo: {train_pairs} generated arithmetic pairs, backbone {model}, run directory {run_dir}")
    shutil.rmtree(run_dir, ignore_errors=True)
    train(config, str(train_file), run_dir)
    reward_model = RewardModel.from_pretrained(run_dir / "model")
    results = evaluate(reward_model, [str(test_file)])
    (output_dir / "eval.json").write_text(json.dumps(results, indent=2) + "\n")
    print(format_table(results))
    return results
