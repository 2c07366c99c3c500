"""`rewardstack export`: a trained model as a standard Transformers folder with a model card."""

from __future__ import annotations

import json
from pathlib import Path

from .files import check_output_dir, mark_output_dir
from .model import RewardModel


def export_model(model_dir: str | Path, output: str | Path, keep_posterior: bool = False) -> RewardModel:
    """Write `model_dir`'s model to `output` (RewardModel.export) with a card naming its base model,
    objective, training options and, when the run's summary.json is beside the model, its data and metrics."""
    model_dir, output = Path(model_dir), Path(output)
    check_output_dir(output, "--output", "export")
    model = RewardModel.from_pretrained(model_dir)
    model.export(output, model_card(model, model_dir), keep_posterior)
    mark_output_dir(output, "export")
    return model


def model_card(model: RewardModel, model_dir: Path) -> str:
    config, training = model.config, model.training_config or {}
    kind = ("a causal LM trained with DPO: its reward is β·(log π − log π_ref), with β = "
            f"{config.beta} and the reference {config.model}") if config.objective == "dpo" else \
        "a reward model: `AutoModelForSequenceClassification`, one output, the reward read at the last non-padding token"
    lines = [
        "---", "library_name: transformers", f"base_model: {config.model}", "tags: [reward-model, rewardstack]", "---", "",
        "# Reward model exported by rewardstack", "", f"This folder holds {kind}.", "",
        f"- base model: `{config.model}`",
        f"- objective: `{config.objective}`" + (f" (policy loss `{config.policy_loss}`, β = {config.beta})" if config.objective != "bt" else ""),
        f"- LoRA r = {config.lora_r} (merged into the weights)" if config.lora_r else "- full fine-tuning",
        f"- max length: {config.max_length} tokens",
    ]
    if training:
        lines.append("- training options: " + ", ".join(f"{k}={training[k]}" for k in ("epochs", "batch_size", "learning_rate", "seed") if k in training))
    summary_path = model_dir.parent / "summary.json"
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text())
        lines.append(f"- trained on `{summary['train']['source']}`: {summary['train']['pairs']} pairs, {summary['steps']} steps")
        for name, metrics in (summary.get("eval") or {}).items():
            lines.append(f"- on `{name}`: accuracy {metrics['accuracy']:.3f}, ECE {metrics['ece']:.3f} over {metrics['pairs']} pairs")
    lines += ["", "```python", "from transformers import AutoModelForSequenceClassification, AutoTokenizer", "",
              "model = AutoModelForSequenceClassification.from_pretrained(PATH)", "tokenizer = AutoTokenizer.from_pretrained(PATH)",
              'text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}, {"role": "assistant", "content": response}], tokenize=False)',
              "reward = model(**tokenizer(text, return_tensors='pt', add_special_tokens=False)).logits[0, 0]", "```", ""]
    return "\n".join(lines)
