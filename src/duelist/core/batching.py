"""Batches of token sequences: length-grouped for training, length-sorted for prediction. A row's length (``len``)
is the padded tokens it takes in a batch (a pair read as two sequences counts both: :class:`duelist.data.encoding.
Duo`)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


def pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to the longest sequence; returns input_ids and attention_mask."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask


def length_groups(lengths: Sequence[int], overhead: int, max_tokens: int | None = None) -> list[np.ndarray]:
    """The positions of one batch's sequences, longest first, cut into consecutive groups so that the padded tokens
    of all groups (each group: its rows x its longest row) plus ``overhead`` tokens per group (what one more forward
    call costs) are fewest. A batch whose sequences differ in length then reads far less padding as a few forward
    calls than as one: a reward head's batch holds both responses of every pair, short and long together. With
    ``max_tokens``, no group holds more padded tokens than that (a sequence longer than it is a group of its own)."""
    if max_tokens is not None and max_tokens < 1:
        raise ValueError(f"max_tokens={max_tokens}: at least 1 padded token a group, or None for no cap")
    lengths = np.asarray(lengths)
    order = np.argsort(-lengths, kind="stable")
    longest = lengths[order]
    n = len(order)
    cost = np.zeros(n + 1)
    start = np.zeros(n + 1, dtype=np.int64)
    for end in range(1, n + 1):  # cost[end]: the cheapest cut of the first `end` sequences; a group i..end pads to i
        options = [
            cost[i] + (end - i) * longest[i] + overhead
            if max_tokens is None or end - i == 1 or (end - i) * longest[i] <= max_tokens
            else np.inf
            for i in range(end)
        ]
        start[end] = int(np.argmin(options))
        cost[end] = options[start[end]]
    groups, end = [], n
    while end > 0:
        groups.append(order[start[end] : end])
        end = int(start[end])
    return groups[::-1]


def sorted_batches(lengths: Sequence[int], batch_size: int, max_tokens: int | None = None) -> list[np.ndarray]:
    """Rows sorted longest first and cut into batches of at most ``batch_size`` rows and, with
    ``max_tokens``, at most ``max_tokens`` padded tokens (rows x longest row); every row appears
    exactly once. A single row longer than ``max_tokens`` forms a batch of its own."""
    lengths = np.asarray(lengths)
    order = np.argsort(-lengths, kind="stable")
    if not max_tokens:
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    batches, start = [], 0
    while start < len(order):
        width = int(lengths[order[start]])  # the longest row of the batch comes first
        rows = max(1, min(batch_size, max_tokens // max(width, 1)))
        batches.append(order[start : start + rows])
        start += rows
    return batches


def train_batches(
    lengths: Sequence[int], units: Sequence[int], batch_size: int, group_by_length: bool, rng: np.random.Generator
) -> list[np.ndarray]:
    """One epoch of training batches.

    ``units[i]`` names the unit row i belongs to; rows of one unit (a pair and its swap, with
    ``augment.same_batch``) always land in the same batch. With ``group_by_length``, units are
    shuffled, grouped into mega-batches of 50 batches, sorted by length inside each, so a batch
    holds sequences of similar length (less padding) while the order stays random.
    """
    units = np.asarray(units)
    lengths = np.asarray(lengths)
    by_unit = np.argsort(units, kind="stable")
    members = np.split(by_unit, np.flatnonzero(np.diff(units[by_unit])) + 1)
    per_unit = max(1, batch_size // max(len(m) for m in members))
    order = rng.permutation(len(members))
    if group_by_length:
        unit_len = np.array([lengths[m].max() for m in members])
        mega = per_unit * 50
        order = np.concatenate(
            [
                chunk[np.argsort(-unit_len[chunk], kind="stable")]
                for chunk in np.array_split(order, max(1, int(np.ceil(len(order) / mega))))
            ]
        )
    batches = [np.concatenate([members[j] for j in order[i : i + per_unit]]) for i in range(0, len(order), per_unit)]
    if group_by_length:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches
