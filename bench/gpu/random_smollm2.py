"""SmolLM2-135M's architecture and tokenizer (from .gpu/smollm2, see prepare.sh) with random weights,
stored where rewardstack looks for the embedded backbone ($REWARDSTACK_HOME). For device calls, whose
64 MiB limit the 540 MB checkpoint exceeds: speed and equality checks do not need trained weights."""

import os
import shutil
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

home = Path(os.environ["REWARDSTACK_HOME"]) / "backbones" / "smollm2-135m"
shutil.copytree(Path(__file__).resolve().parents[2] / ".gpu" / "smollm2", home, dirs_exist_ok=True)
torch.manual_seed(0)
model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(home), dtype=torch.float32)
model.save_pretrained(home)
print(f"SmolLM2-135M architecture, random weights ({sum(p.numel() for p in model.parameters())} parameters): {home}")
