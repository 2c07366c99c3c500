"""Hugging Face reward models (`AutoModelForSequenceClassification`: Skywork-Reward, OpenAssistant's, TRL's
and most reward models on the Hub, and folders written by `rewardstack export`) as reward sources.

Each model reads text its own way: the conversation is rendered with the model's own chat template
(prompt messages, then the response as the assistant's turn) and tokenised whole, and the reward is the
model's own forward output, pooled as Transformers pools it (for decoder models: the rightmost token that
is not the padding token). A sequence over `max_length` keeps the end of its prompt and the start of its
response, as rewardstack's own models do, and is counted as truncated.

A model with several outputs (num_labels > 1) gives each one as a named part (its `id2label` name) and
reduces them to one reward by `reduce`: {index: k} (one output), {weights: [w_1, …]} (Σ w_k·output_k).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..backbones import download_hint, downloads_allowed, resolve_device, set_attention
from ..config import ComputeConfig
from ..data.encode import MIN_MAX_LENGTH, Encoder, as_messages, length_batches, pad_right, truncate
from ..errors import UserError
from ..scores import RewardScores

DEFAULT_MAX_LENGTH = 4096


def is_sequence_classifier(path: str | Path) -> bool:
    """A local folder holding a Transformers config whose architecture is a sequence classifier."""
    config = Path(path) / "config.json"
    if not config.is_file():
        return False
    try:
        architectures = json.loads(config.read_text()).get("architectures") or []
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    return any(str(a).endswith("ForSequenceClassification") for a in architectures)


class HFRewardModel:
    """A reward source around a sequence-classification model and its tokenizer."""

    def __init__(self, model: torch.nn.Module, tokenizer, name: str, max_length: int | None = None, reduce: dict | None = None):
        self.model, self.tokenizer, self.name = model.eval(), tokenizer, name
        if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < MIN_MAX_LENGTH):
            raise UserError(f"{name}: max_length must be a whole number of tokens, at least {MIN_MAX_LENGTH}, got {max_length!r}")
        limit = getattr(model.config, "max_position_embeddings", None) or DEFAULT_MAX_LENGTH
        self.max_length = max_length or min(limit, DEFAULT_MAX_LENGTH)
        self.encoder = Encoder(tokenizer, self.max_length)  # renders and counts tokens (the server sizes requests with it)
        self.num_labels = int(model.config.num_labels)
        id2label = getattr(model.config, "id2label", None) or {}
        self.labels = [str(id2label.get(k, id2label.get(str(k), f"output_{k}"))) for k in range(self.num_labels)]
        self.weights = reduction_weights(reduce, self.labels, name)
        self.posterior = None
        self.compute = ComputeConfig()

    def use(self, compute: ComputeConfig) -> "HFRewardModel":
        """Run on compute.device with its attention kernel and autocast (batches stay padded: the model
        reads whole conversations, with no prompt boundary to share)."""
        self.compute = compute
        set_attention(self.model, compute.attn_implementation)
        self.model.to(resolve_device(compute.device))
        return self

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, max_length: int | None = None, reduce: dict | None = None) -> "HFRewardModel":
        """Load a local folder or a Hub id (from the local cache unless REWARDSTACK_ALLOW_DOWNLOAD=1)."""
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        allow = downloads_allowed()
        source = str(name_or_path)
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=not allow)
            model = AutoModelForSequenceClassification.from_pretrained(source, dtype=torch.float32, local_files_only=not allow, use_safetensors=True)
        except (OSError, ValueError) as err:
            raise UserError(f"cannot load the reward model {source!r}{download_hint()}: {str(err).splitlines()[0]}") from None
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return cls(model, tokenizer, source, max_length, reduce)

    def token_ids(self, prompt, response: str) -> tuple[list[int], bool]:
        """The ids the model reads for one row (the whole rendered conversation tokenised at once), and
        whether it was truncated to max_length."""
        prompt_text, response_text = self.encoder.render(as_messages(prompt), response)
        specials = not self.tokenizer.chat_template  # templates write their own BOS
        ids = self.tokenizer(prompt_text + response_text, add_special_tokens=specials)["input_ids"]
        if len(ids) <= self.max_length:
            return ids, False
        prompt_ids = self.tokenizer(prompt_text, add_special_tokens=specials)["input_ids"]
        if ids[: len(prompt_ids)] != prompt_ids:  # the tokenizer merged across the boundary: cut the response apart
            ids = prompt_ids + self.tokenizer(response_text, add_special_tokens=False)["input_ids"]
        kept_prompt, (kept_response,), _ = truncate(prompt_ids, [ids[len(prompt_ids):]], self.max_length, self.encoder.max_prompt_length)
        return kept_prompt + kept_response, True

    @torch.no_grad()
    def outputs(self, sequences: Sequence[Sequence[int]], batch_size: int = 16) -> np.ndarray:
        """The model's pooled outputs (rows, num_labels) for token-id sequences, in input order; batches are
        right-padded with the model's padding token (or, if it has none, an id absent from the batch, so
        that the model pools at each sequence's last token exactly as it would unpadded)."""
        out = np.empty((len(sequences), self.num_labels), dtype=np.float64)
        device = next(self.model.parameters()).device
        text_config = self.model.config.get_text_config()
        own_pad = text_config.pad_token_id
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.compute.bf16)
        for batch in length_batches([len(s) for s in sequences], batch_size):
            rows = [sequences[i] for i in batch]
            pad = own_pad if own_pad is not None else _absent_id(rows)
            ids, mask = pad_right(rows, pad)
            text_config.pad_token_id = pad
            try:
                with autocast:
                    logits = self.model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            finally:
                text_config.pad_token_id = own_pad
            out[batch] = logits.double().cpu().numpy()
        return out

    def score(self, prompts, responses, batch_size: int = 16) -> RewardScores:
        if len(prompts) != len(responses):
            raise UserError(f"{self.name}: {len(prompts)} prompts but {len(responses)} responses")
        encoded = [self.token_ids(p, r) for p, r in zip(prompts, responses)]
        values = self.outputs([ids for ids, _ in encoded], batch_size)
        parts = {label: values[:, k] for k, label in enumerate(self.labels)} if self.num_labels > 1 else {}
        return RewardScores(mean=values @ self.weights, parts=parts, truncated=sum(cut for _, cut in encoded))

    def info(self) -> dict[str, Any]:
        return {"base_model": Path(self.name).name if Path(self.name).is_absolute() else self.name, "objective": "sequence-classification",
                "max_length": self.max_length, "posterior": False, "outputs": self.labels}


def reduction_weights(reduce: dict | None, labels: list[str], name: str) -> np.ndarray:
    """Weights w with reward = Σ w_k · output_k, from a node's `reduce`."""
    count = len(labels)
    if reduce is None:
        if count != 1:
            raise UserError(f"{name}: the model has {count} outputs ({', '.join(labels)}): say how to reduce them, "
                            "`reduce: {index: K}` or `reduce: {weights: [...]}`")
        return np.ones(1)
    if not isinstance(reduce, dict) or len(reduce) != 1 or not {"index", "weights"} & reduce.keys():
        raise UserError(f"{name}: `reduce` is {{index: K}} or {{weights: [w_1, …, w_{count}]}}")
    if "index" in reduce:
        index = reduce["index"]
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < count:
            raise UserError(f"{name}: reduce.index must be an output index from 0 to {count - 1}, got {index!r}")
        return np.eye(count)[index]
    weights = reduce["weights"]
    if not isinstance(weights, list) or len(weights) != count or not all(isinstance(w, (int, float)) and not isinstance(w, bool) for w in weights):
        raise UserError(f"{name}: reduce.weights must be {count} numbers, one per output ({', '.join(labels)})")
    return np.asarray(weights, dtype=np.float64)


def _absent_id(rows: Sequence[Sequence[int]]) -> int:
    """The smallest token id that occurs in none of the rows."""
    used = {token for row in rows for token in row}
    return next(i for i in range(len(used) + 1) if i not in used)
