"""Packed, prefix-shared sequences: the one input layout of every forward pass.

A *segment* is several sequences that begin alike (a prompt with its k responses: k = 2 for a pair, n for
a best-of-n pool, 1 for plain scoring). Its shared prefix C (the longest common prefix of the members'
token ids) is laid out once, then each member's suffix:

    [ prefix (C tokens) | suffix of member 1 | suffix of member 2 | … ]

Token q may attend to token k when both are in the same segment, k ≤ q, and k is in the prefix or in
q's own suffix; positions restart at C for every suffix. Each member's hidden states are then exactly
those of its sequence run alone. Segments are packed into rows of up to `row_tokens` tokens (rows are
block-diagonal across segments), so little padding is computed. The attention mask is a dense boolean
(rows, 1, T, T) tensor for PyTorch SDPA (CPU and GPU), an additive float mask for `eager`, or a
BlockMask for `flex_attention`.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Sequence

import torch

from .data.encode import Encoded

ATTENTION_IMPLEMENTATIONS = ("sdpa", "eager", "flex_attention")


def common_prefix(sequences: Sequence[Sequence[int]]) -> int:
    """Length of the longest prefix all `sequences` share."""
    first, n = sequences[0], min(len(s) for s in sequences)
    for i in range(n):
        if any(s[i] != first[i] for s in sequences[1:]):
            return i
    return n


def segment_tokens(sequences: Sequence[Encoded], members: Sequence[int]) -> int:
    """Tokens a segment of `members` computes: its shared prefix once, then every member's suffix."""
    ids = [sequences[i].ids for i in members]
    shared = common_prefix(ids)
    return shared + sum(len(s) - shared for s in ids)


def prompt_segments(sequences: Sequence[Encoded], share_prompts: bool = True) -> list[list[int]]:
    """Sequences grouped by identical prompt tokens (each one alone without `share_prompts`)."""
    if not share_prompts:
        return [[i] for i in range(len(sequences))]
    groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for i, sequence in enumerate(sequences):
        groups[sequence.prompt_ids].append(i)
    return list(groups.values())


def plan_batches(sequences: Sequence[Encoded], segments: Sequence[Sequence[int]], batch_tokens: int) -> list[list[list[int]]]:
    """Segments cut to at most `batch_tokens` tokens each (a member alone may exceed it) and grouped,
    longest first, into forward passes of about `batch_tokens` computed tokens."""
    pieces: list[list[int]] = []
    for members in segments:
        piece: list[int] = []
        for i in members:
            if piece and segment_tokens(sequences, piece + [i]) > batch_tokens:
                pieces.append(piece)
                piece = []
            piece.append(i)
        pieces.append(piece)
    sizes = {id(p): segment_tokens(sequences, p) for p in pieces}
    pieces.sort(key=lambda p: -sizes[id(p)])
    batches: list[list[list[int]]] = []
    used = 0
    for piece in pieces:
        if batches and used + sizes[id(piece)] <= batch_tokens:
            batches[-1].append(piece)
            used += sizes[id(piece)]
        else:
            batches.append([piece])
            used = sizes[id(piece)]
    return batches


def plan_rows(lengths: Sequence[int], row_tokens: int) -> list[list[int]]:
    """Segments (by index) into rows: first fit, longest first, up to `row_tokens` tokens per row (a
    longer segment gets a row of its own); row_tokens 0 gives every segment its own row."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    if row_tokens <= 0:
        return [[i] for i in order]
    rows: list[list[int]] = []
    free: list[int] = []
    for i in order:
        slot = next((r for r, space in enumerate(free) if lengths[i] <= space), None)
        if slot is None:
            rows.append([i])
            free.append(max(row_tokens - lengths[i], 0))
        else:
            rows[slot].append(i)
            free[slot] -= lengths[i]
    return rows


@dataclass
class Packed:
    """One forward pass over packed segments. Outputs are per member, in the order of `indices` (the
    members' indices into the sequence list, ascending). Flat positions index rows × T.

    input_ids, position_ids, segment, part: (rows, T); segment −1 − position for padding (each pad token
    attends to itself alone), part 0 for a prefix token and j + 1 for member j's suffix.
    last: (members,) flat position of each member's last token, where its reward is read.
    tokens: (members, longest) flat positions of each member's whole sequence in order, −1 beyond its end.
    response_state, response_target, response_owner: per response token (the tokens after each member's
    prompt), the flat position of the state that predicts it, its id, and its member.
    """

    indices: list[int]
    input_ids: torch.Tensor
    position_ids: torch.Tensor
    segment: torch.Tensor
    part: torch.Tensor
    last: torch.Tensor
    tokens: torch.Tensor
    response_state: torch.Tensor
    response_target: torch.Tensor
    response_owner: torch.Tensor

    def to(self, device) -> "Packed":
        return Packed(**{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in vars(self).items()})

    @property
    def computed_tokens(self) -> int:
        """Tokens run through the backbone, padding included."""
        return self.input_ids.numel()

    def allowed(self) -> torch.Tensor:
        """(rows, T, T) boolean: may query q attend to key k."""
        seg, part = self.segment, self.part
        positions = torch.arange(seg.shape[1], device=seg.device)
        causal = positions[None, :, None] >= positions[None, None, :]
        same_segment = seg[:, :, None] == seg[:, None, :]
        visible = (part[:, None, :] == 0) | (part[:, :, None] == part[:, None, :])
        return causal & same_segment & visible

    def attention_mask(self, implementation: str, dtype: torch.dtype = torch.float32):
        """The 4-D mask in the form `implementation` takes."""
        if implementation == "flex_attention":
            from torch.nn.attention.flex_attention import create_block_mask

            seg, part = self.segment, self.part

            def mask_mod(b, h, q, k):
                return (q >= k) & (seg[b, q] == seg[b, k]) & ((part[b, k] == 0) | (part[b, q] == part[b, k]))

            rows, width = seg.shape
            return create_block_mask(mask_mod, rows, None, width, width, device=seg.device)
        allowed = self.allowed()[:, None]
        if implementation == "eager":
            return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)
        return allowed


def pack(sequences: Sequence[Encoded], segments: Sequence[Sequence[int]], pad_id: int, row_tokens: int = 0) -> Packed:
    """One forward pass over `segments` (lists of indices into `sequences`), packed into rows of up to
    `row_tokens` tokens (0: a row per segment)."""
    lengths = [segment_tokens(sequences, members) for members in segments]
    rows = plan_rows(lengths, row_tokens)
    width = max(sum(lengths[s] for s in row) for row in rows)
    indices = sorted(i for members in segments for i in members)
    output = {i: k for k, i in enumerate(indices)}
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)
    segment = -1 - torch.arange(len(rows) * width).reshape(len(rows), width)
    part = torch.zeros((len(rows), width), dtype=torch.long)
    last = torch.empty(len(indices), dtype=torch.long)
    token_map: list[list[int]] = [[] for _ in indices]
    for r, row in enumerate(rows):
        start = 0
        for s in row:
            members = segments[s]
            full = [sequences[i].ids for i in members]
            shared = common_prefix(full)
            ids[r, start : start + shared] = torch.tensor(full[0][:shared], dtype=torch.long)
            position_ids[r, start : start + shared] = torch.arange(shared)
            segment[r, start : start + lengths[s]] = s
            offset = start + shared
            for j, (i, tokens) in enumerate(zip(members, full)):
                suffix = len(tokens) - shared
                ids[r, offset : offset + suffix] = torch.tensor(tokens[shared:], dtype=torch.long)
                position_ids[r, offset : offset + suffix] = torch.arange(shared, len(tokens))
                part[r, offset : offset + suffix] = j + 1
                flat = r * width
                token_map[output[i]] = [flat + start + q for q in range(shared)] + [flat + offset + q for q in range(suffix)]
                last[output[i]] = token_map[output[i]][-1]
                offset += suffix
            start += lengths[s]
    state, target, owner = [], [], []
    for k, i in enumerate(indices):
        positions, tokens = token_map[k], sequences[i].ids
        for q in range(max(len(sequences[i].prompt_ids), 1), len(tokens)):
            state.append(positions[q - 1])
            target.append(tokens[q])
            owner.append(k)
    longest = max(len(m) for m in token_map)
    token_index = torch.tensor([m + [-1] * (longest - len(m)) for m in token_map], dtype=torch.long)
    return Packed(indices, ids, position_ids, segment, part, last, token_index,
                  torch.tensor(state, dtype=torch.long), torch.tensor(target, dtype=torch.long), torch.tensor(owner, dtype=torch.long))


def pack_pairs(pairs, indices: Sequence[int], pad_id: int, row_tokens: int = 0, share: bool = True) -> Packed:
    """The pairs `indices` of EncodedPairs as one forward pass, a segment per pair sharing the tokens
    chosen and rejected begin with (each sequence alone without `share`); outputs are the chosen
    rewards, then the rejected, in `indices` order."""
    sequences = [pairs.chosen[i] for i in indices] + [pairs.rejected[i] for i in indices]
    n = len(indices)
    segments = [[k, n + k] for k in range(n)] if share else [[k] for k in range(2 * n)]
    return pack(sequences, segments, pad_id, row_tokens)
