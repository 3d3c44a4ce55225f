"""Where each token of a flattened batch sits in its sequence and in the paged latent KV cache.

The batch holds B sequences back to back. Sequence i contributes its q_i newest tokens, at
positions ``seq_lens[i] - q_i … seq_lens[i] - 1``; they occupy rows
``query_start_loc[i] … query_start_loc[i+1] - 1`` of the batch. Token t's latent is written to
flat cache slot ``slot_mapping[t] = block * block_size + offset``; sequence i's context (cached +
new, ``seq_lens[i]`` tokens) is read back through ``block_tables[i]`` (padded with any block id).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import accumulate

import torch


@dataclass(frozen=True)
class AttentionMetadata:
    """One forward step's layout (see module doc). Built by the engine, read by attention."""

    query_start_loc: torch.Tensor  # Long[B+1], cumulative q_i
    seq_lens: torch.Tensor  # Long[B], context length after this step (cached + new)
    block_tables: torch.Tensor  # Long[B, max_blocks], padded
    slot_mapping: torch.Tensor  # Long[T], flat cache slot of each new token
    query_lens: list[int]  # q_i, on the host
    seq_lens_list: list[int]  # seq_lens, on the host
    _decodes: dict = field(default_factory=dict, init=False, compare=False, repr=False)  # memo by block_size

    @property
    def num_seqs(self) -> int:
        return len(self.query_lens)

    @property
    def num_tokens(self) -> int:
        return sum(self.query_lens)

    @classmethod
    def build(
        cls,
        query_lens: Sequence[int],
        seq_lens: Sequence[int],
        block_tables: Sequence[Sequence[int]],
        block_size: int,
        device: str | torch.device = "cpu",
    ) -> AttentionMetadata:
        """From host lists: the q_i, the context lengths, and each sequence's block ids."""
        if not (len(query_lens) == len(seq_lens) == len(block_tables)):
            raise ValueError("query_lens, seq_lens and block_tables must have one entry per sequence")
        slots: list[int] = []
        for q, s, blocks in zip(query_lens, seq_lens, block_tables, strict=True):
            if not 0 < q <= s:
                raise ValueError(f"query_len {q} must be in 1..seq_len {s}")
            if len(blocks) * block_size < s:
                raise ValueError(f"{len(blocks)} blocks of {block_size} cannot hold {s} tokens")
            slots += [blocks[p // block_size] * block_size + p % block_size for p in range(s - q, s)]
        width = max((len(b) for b in block_tables), default=0)
        table = [list(b) + [0] * (width - len(b)) for b in block_tables]
        starts = [0]
        for q in query_lens:
            starts.append(starts[-1] + q)
        long = {"dtype": torch.long, "device": device}
        return cls(
            query_start_loc=torch.tensor(starts, **long),
            seq_lens=torch.tensor(list(seq_lens), **long),
            block_tables=torch.tensor(table, **long).view(len(table), width),
            slot_mapping=torch.tensor(slots, **long),
            query_lens=list(query_lens),
            seq_lens_list=list(seq_lens),
        )

    def decode_batch(self, block_size: int) -> DecodeBatch | None:
        """The short sequences' queries laid out for one batched attention (None if there are none).

        Built once per step and cache block size, then shared by every layer."""
        if block_size not in self._decodes:
            self._decodes[block_size] = DecodeBatch.build(self, block_size)
        return self._decodes[block_size]

    def positions(self) -> torch.Tensor:
        """Long[T]: the position of every new token (seq_lens[i] - q_i … seq_lens[i] - 1)."""
        pos = [p for q, s in zip(self.query_lens, self.seq_lens_list, strict=True) for p in range(s - q, s)]
        return torch.tensor(pos, dtype=torch.long, device=self.slot_mapping.device)


MAX_DECODE_QUERY = 4  # a sequence with at most this many new tokens (a decode, or one with <= 3 drafts) is batched


@dataclass(frozen=True)
class DecodeBatch:
    """The queries of the step's sequences with q_i <= ``MAX_DECODE_QUERY`` (decodes, and decodes
    verifying speculative drafts), each attending alone over its causal context (its sequence's
    positions up to its own), gathered through the block table cut to the longest (n_blocks), so
    that their attention runs as one padded, masked batch (the query's own latent is written
    before attention reads the cache)."""

    seqs: list[int]  # indices of the batched sequences
    rows: torch.Tensor  # Long[R], their queries' rows in the batch
    block_tables: torch.Tensor  # Long[R * n_blocks], flattened
    valid: torch.Tensor  # Bool[R, n_blocks * block_size], context position <= the query's
    every_row: bool  # every sequence of the step is batched: rows == 0 .. T-1

    @classmethod
    def build(cls, meta: AttentionMetadata, block_size: int) -> DecodeBatch | None:
        seqs = [i for i, q in enumerate(meta.query_lens) if q <= MAX_DECODE_QUERY]
        if not seqs:
            return None
        device = meta.block_tables.device
        starts = [0, *accumulate(meta.query_lens)]
        rows, lens, owner = [], [], []
        for i in seqs:
            q, s = meta.query_lens[i], meta.seq_lens_list[i]
            rows += range(starts[i], starts[i] + q)
            lens += range(s - q + 1, s + 1)
            owner += [i] * q
        n_blocks = -(-max(lens) // block_size)
        long = {"dtype": torch.long, "device": device}
        return cls(
            seqs=seqs,
            rows=torch.tensor(rows, **long),
            block_tables=meta.block_tables[torch.tensor(owner, **long), :n_blocks].reshape(-1),
            valid=torch.arange(n_blocks * block_size, device=device)[None, :] < torch.tensor(lens, **long)[:, None],
            every_row=len(seqs) == meta.num_seqs,
        )


def contiguous_layout(seq_lens: Sequence[int], block_size: int) -> tuple[list[list[int]], int]:
    """Give sequence i consecutive fresh blocks; returns (block_tables, num_blocks needed)."""
    tables, nxt = [], 0
    for s in seq_lens:
        n = -(-s // block_size)
        tables.append(list(range(nxt, nxt + n)))
        nxt += n
    return tables, nxt
