"""RewardModel: a causal-LM backbone (optionally with LoRA) plus a scalar reward head.

r(x, y) = wᵀ h_T, where h_T is the backbone's last hidden state at the last non-padding token of
prompt + response. The LM head is left in place and usable.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer

from .backbones import load_backbone
from .data.encode import Encoded, Encoder, as_messages, length_batches, pad_right
from .data.load import Message
from .errors import UserError
from .sources import RewardScores

FORMAT_VERSION = 1
CONFIG_FILE = "rewardstack.json"
PROGRESS_MIN_BATCHES = 20  # scoring shows a progress bar from this many batches on


@dataclass
class ModelConfig:
    """What a reward model is: its backbone, how it reads text, and its adapter."""

    model: str = "smollm2-135m"  # backbone: smollm2-135m, tiny-random, a local path or a Hugging Face id
    max_length: int = 512  # tokens of prompt + response; longer pairs are truncated and counted
    max_prompt_length: int | None = None  # tokens a long prompt keeps at least (default max_length // 2)
    lora_r: int = 16  # LoRA rank; 0 trains the whole backbone
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_target_modules: str = "all-linear"  # comma-separated module names, or all-linear

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


class RewardModel(torch.nn.Module):
    def __init__(self, backbone: torch.nn.Module, tokenizer, config: ModelConfig, training: dict | None = None):
        super().__init__()
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.config = config
        self.training_config = training or {}
        self.head = torch.nn.Linear(backbone.config.hidden_size, 1, bias=False)
        torch.nn.init.zeros_(self.head.weight)
        self.encoder = Encoder(tokenizer, config.max_length, config.max_prompt_length)

    @classmethod
    def create(cls, config: ModelConfig) -> "RewardModel":
        """A fresh reward model: the backbone with LoRA adapters (or all weights trainable) and a zero head."""
        backbone, tokenizer = load_backbone(config.model)
        if config.lora_r > 0:
            targets = config.lora_target_modules
            lora = LoraConfig(
                r=config.lora_r,
                lora_alpha=config.lora_alpha,
                lora_dropout=config.lora_dropout,
                target_modules=targets if targets == "all-linear" else [t.strip() for t in targets.split(",")],
            )
            backbone = get_peft_model(backbone, lora)
        return cls(backbone, tokenizer, config)

    @property
    def decoder(self) -> torch.nn.Module:
        """The transformer body without the LM head (LoRA layers included)."""
        base = self.backbone.get_base_model() if isinstance(self.backbone, PeftModel) else self.backbone
        return base.get_decoder()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Rewards of right-padded sequences, shape (batch,)."""
        hidden = self.decoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        last = attention_mask.sum(dim=1) - 1
        return self.head(hidden[torch.arange(hidden.shape[0]), last]).squeeze(-1)

    @torch.no_grad()
    def rewards(self, sequences: Sequence[Encoded], batch_size: int = 16) -> np.ndarray:
        """Rewards of encoded sequences, computed in length-grouped batches, in input order."""
        was_training = self.training
        self.eval()
        out = np.empty(len(sequences), dtype=np.float64)
        device = self.head.weight.device
        try:
            batches = length_batches([len(s) for s in sequences], batch_size)
            for batch in tqdm(batches, desc="score", leave=False, disable=len(batches) < PROGRESS_MIN_BATCHES):
                ids, mask = pad_right([sequences[i].ids for i in batch], self.tokenizer.pad_token_id)
                out[batch] = self(ids.to(device), mask.to(device)).double().cpu().numpy()
        finally:
            self.train(was_training)
        return out

    def score(
        self, prompts: Sequence[str | Sequence[Message]], responses: Sequence[str], batch_size: int = 16
    ) -> RewardScores:
        """Reward of each (prompt, response) row; `truncated` counts rows cut to max_length."""
        if len(prompts) != len(responses):
            raise UserError(f"score: {len(prompts)} prompts but {len(responses)} responses")
        sequences, truncated = [], 0
        for prompt, response in zip(prompts, responses):
            (encoded,), cut = self.encoder.encode(as_messages(prompt), [response])
            sequences.append(encoded)
            truncated += cut
        return RewardScores(mean=self.rewards(sequences, batch_size), truncated=truncated)

    def trainable_parameters(self) -> dict[str, torch.nn.Parameter]:
        return {name: p for name, p in self.named_parameters() if p.requires_grad}

    def save(self, directory: str | Path) -> None:
        """Write weights (adapter or full backbone, and head) as safetensors, tokenizer and configs."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if isinstance(self.backbone, PeftModel):
            self.backbone.save_pretrained(directory / "adapter")
        else:
            self.backbone.save_pretrained(directory / "backbone")
        save_file({"weight": self.head.weight.detach().cpu().contiguous()}, directory / "head.safetensors")
        self.tokenizer.save_pretrained(directory / "tokenizer")
        meta = {"format_version": FORMAT_VERSION, "model": asdict(self.config), "training": self.training_config}
        (directory / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "RewardModel":
        directory = Path(directory)
        meta_path = directory / CONFIG_FILE
        if not meta_path.exists():
            raise UserError(f"{directory}: not a reward model directory (no {CONFIG_FILE})")
        meta = json.loads(meta_path.read_text())
        config = ModelConfig.from_dict(meta["model"])
        tokenizer = AutoTokenizer.from_pretrained(directory / "tokenizer", local_files_only=True)
        if (directory / "adapter").exists():
            backbone, _ = load_backbone(config.model)
            backbone = PeftModel.from_pretrained(backbone, directory / "adapter", is_trainable=False)
        else:
            backbone = AutoModelForCausalLM.from_pretrained(directory / "backbone", dtype=torch.float32, local_files_only=True)
        model = cls(backbone, tokenizer, config, meta.get("training"))
        model.head.weight.data.copy_(load_file(directory / "head.safetensors")["weight"])
        return model.eval()
