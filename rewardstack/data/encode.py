"""Token encoding: chat template, explicit truncation, right padding and length-grouped batches."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ..errors import UserError
from .load import ROLES, Message

MIN_MAX_LENGTH = 8  # tokens: room for a chat template's markers around a prompt and a response
PROGRESS_MIN_BATCHES = 20  # scoring shows a progress bar from this many batches on


@dataclass(frozen=True)
class Encoded:
    """Token ids of one (prompt, response) sequence; the reward is read at its last token."""

    prompt_ids: tuple[int, ...]
    response_ids: tuple[int, ...]

    @property
    def ids(self) -> list[int]:
        return [*self.prompt_ids, *self.response_ids]

    def __len__(self) -> int:
        return len(self.prompt_ids) + len(self.response_ids)


def truncate(
    prompt_ids: Sequence[int], responses: Sequence[Sequence[int]], max_length: int, max_prompt_length: int
) -> tuple[list[int], list[list[int]], bool]:
    """Fit prompt + each response into `max_length`: keep the END of the prompt and the START of each
    response. The prompt keeps max(max_length − longest response, max_prompt_length) tokens at most;
    the responses share the rest. Returns (prompt, responses, whether anything was cut)."""
    longest = max(len(r) for r in responses)
    if len(prompt_ids) + longest <= max_length:
        return list(prompt_ids), [list(r) for r in responses], False
    keep = min(len(prompt_ids), max(max_length - longest, max_prompt_length))
    budget = max_length - keep
    return list(prompt_ids[len(prompt_ids) - keep :]), [list(r[:budget]) for r in responses], True


def render(tokenizer, prompt: Sequence[Message], response: str) -> tuple[str, str]:
    """Prompt text (up to where the assistant starts) and response text (with its end-of-turn), by the
    tokenizer's chat template, or as "Role: text" turns where it has none."""
    messages = list(prompt)
    if tokenizer.chat_template:
        prompt_text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": response}], tokenize=False)
        if full.startswith(prompt_text):
            return prompt_text, full[len(prompt_text) :]
        return prompt_text, response + (tokenizer.eos_token or "")
    turns = "".join(f"{m['role'].capitalize()}: {m['content']}\n\n" for m in messages)
    return turns + "Assistant: ", response + (tokenizer.eos_token or "")


class Encoder:
    """Renders chat messages with the tokenizer's template and tokenises prompt and response apart,
    so the boundary between them is exact (the prompt is shared by all responses to it)."""

    def __init__(self, tokenizer, max_length: int, max_prompt_length: int | None = None):
        if max_length < MIN_MAX_LENGTH:
            raise ValueError(f"max_length must be at least {MIN_MAX_LENGTH} tokens")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.max_prompt_length = max_prompt_length if max_prompt_length is not None else max_length // 2
        if not 0 < self.max_prompt_length < max_length:
            raise ValueError("max_prompt_length must be between 1 and max_length - 1")

    def render(self, prompt: Sequence[Message], response: str) -> tuple[str, str]:
        """Prompt text (up to where the assistant starts) and response text (with its end-of-turn)."""
        return render(self.tokenizer, prompt, response)

    def encode(self, prompt: Sequence[Message], responses: Sequence[str]) -> tuple[list[Encoded], bool]:
        """Encode several responses to one prompt; returns the sequences and whether any was truncated."""
        rendered = [self.render(prompt, r) for r in responses]
        with_specials = not self.tokenizer.chat_template  # templates write their own BOS
        prompt_ids = self.tokenizer(rendered[0][0], add_special_tokens=with_specials)["input_ids"]
        response_ids = [self.tokenizer(r, add_special_tokens=False)["input_ids"] for _, r in rendered]
        prompt_ids, response_ids, cut = truncate(prompt_ids, response_ids, self.max_length, self.max_prompt_length)
        return [Encoded(tuple(prompt_ids), tuple(r)) for r in response_ids], cut


def as_messages(prompt: str | Sequence[Message]) -> tuple[Message, ...]:
    """A prompt given as a plain string is one user turn; a message list must use the chat roles."""
    if isinstance(prompt, str):
        return ({"role": "user", "content": prompt},)
    if not prompt:
        raise UserError("prompt: an empty list of messages")
    for i, message in enumerate(prompt):
        if not isinstance(message, dict) or message.get("role") not in ROLES or not isinstance(message.get("content"), str):
            raise UserError(f"prompt message {i}: expected {{'role': one of {', '.join(ROLES)}, 'content': text}}, got {str(message)[:80]}")
    return tuple(prompt)


def prompt_key(prompt: str | Sequence[Message]) -> str:
    """One string per distinct prompt, a plain string and its one-user-turn form alike."""
    return repr(as_messages(prompt))


def pad_right(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), right-padded to the longest sequence."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, seq in enumerate(sequences):
        ids[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[i, : len(seq)] = 1
    return ids, mask


def length_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first), so little padding is computed."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


@dataclass
class EncodedPairs:
    """Encoded preference pairs; `margin` is 0 where a pair has none."""

    chosen: list[Encoded]
    rejected: list[Encoded]
    margin: list[float]
    subset: list[str | None]
    truncated: int

    def __len__(self) -> int:
        return len(self.chosen)

    def tokens(self, index: int) -> int:
        return len(self.chosen[index]) + len(self.rejected[index])

    def take(self, indices: Sequence[int]) -> "EncodedPairs":
        """The pairs `indices`, in that order (`truncated` counts the whole set's)."""
        return EncodedPairs([self.chosen[i] for i in indices], [self.rejected[i] for i in indices], [self.margin[i] for i in indices],
                            [self.subset[i] for i in indices], self.truncated)


def encode_pairs(encoder: Encoder, pairs) -> EncodedPairs:
    """Encode `PreferencePair`s; the prompt is tokenised once per pair and truncated alike for both."""
    chosen, rejected, truncated = [], [], 0
    for pair in pairs:
        (c, r), cut = encoder.encode(pair.prompt, [pair.chosen, pair.rejected])
        chosen.append(c)
        rejected.append(r)
        truncated += cut
    margins = [p.margin or 0.0 for p in pairs]
    return EncodedPairs(chosen, rejected, margins, [p.subset for p in pairs], truncated)
