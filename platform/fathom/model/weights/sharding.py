"""Sharding as data: which slice of each checkpoint tensor a rank holds, and under what name.

``SHARDING_TABLE`` maps checkpoint tensor names (regexes over the Hugging Face names) to how they
are split. ``plan`` is a pure function of (table, layout, checkpoint names) giving, for every
tensor this rank needs, our parameter name and the slice to read. Axes:

* ``replicated``: the whole tensor on every rank;
* ``tp``: split in W equal parts along ``dim``, part ``rank`` (heads, dense/shared MLP width);
* ``vocab``: rows split in W parts of ceil(V / W), part ``rank`` (embedding, LM head);
* ``expert``: only experts of this rank's expert shard, renumbered locally, each split in W/EP
  equal parts along ``dim``, part ``moe_tp_rank`` (TP inside EP).

Layers at index >= num_hidden_layers (the multi-token-prediction modules) are skipped.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from fathom.model.layers.vocab import vocab_range
from fathom.parallel.context import ParallelContext

L = r"model\.layers\.(?P<layer>\d+)\."
SHARDING_TABLE: tuple[tuple[str, str, int | None], ...] = (
    # (checkpoint name regex, axis, split dim)
    (r"model\.embed_tokens\.weight", "vocab", 0),
    (r"lm_head\.weight", "vocab", 0),
    (r"model\.norm\.weight", "replicated", None),
    (L + r"(input|post_attention)_layernorm\.weight", "replicated", None),
    (
        L + r"self_attn\.(q_a_proj|kv_a_proj_with_mqa|q_a_layernorm|kv_a_layernorm)\.weight",
        "replicated",
        None,
    ),
    (L + r"self_attn\.(q_proj|q_b_proj|kv_b_proj)\.weight", "tp", 0),
    (L + r"self_attn\.o_proj\.weight", "tp", 1),
    (L + r"mlp\.(shared_experts\.)?(gate_proj|up_proj)\.weight", "tp", 0),
    (L + r"mlp\.(shared_experts\.)?down_proj\.weight", "tp", 1),
    (L + r"mlp\.experts\.(?P<expert>\d+)\.(gate_proj|up_proj)\.weight", "expert", 0),
    (L + r"mlp\.experts\.(?P<expert>\d+)\.down_proj\.weight", "expert", 1),
    (L + r"mlp\.gate\.(weight|e_score_correction_bias)", "replicated", None),
)
# Checkpoint tensors that carry nothing we load (old rotary caches).
IGNORED = re.compile(r".*rotary_emb\.inv_freq$")
LAYER = re.compile(r"model\.layers\.(\d+)\.")


@dataclass(frozen=True)
class Layout:
    """What ``plan`` needs to know about a rank and the model. Which ranks split what, and which
    experts live on the rank, are ``ctx``'s answers (``ParallelContext.local_experts``), the same
    ones the model's layers get."""

    ctx: ParallelContext
    n_routed_experts: int
    num_hidden_layers: int
    vocab_size: int
    tie_word_embeddings: bool = False

    @property
    def local_experts(self) -> range:
        return self.ctx.local_experts(self.n_routed_experts)


@dataclass(frozen=True)
class Shard:
    """Read ``[start, stop)`` of the checkpoint tensor along ``dim`` (None: all of it) into ``name``."""

    name: str
    dim: int | None = None
    start: int = 0
    stop: int | None = None  # None: the whole tensor along dim


class UnexpectedTensor(ValueError):
    pass


def _part(size: int, parts: int, index: int, name: str) -> tuple[int, int]:
    if size % parts:
        raise ValueError(f"{name}: dim of size {size} cannot be split in {parts} equal parts")
    per = size // parts
    return index * per, (index + 1) * per


def shard_for(name: str, shape: tuple[int, ...], layout: Layout, table=SHARDING_TABLE) -> list[Shard]:
    """The parameters of this rank that checkpoint tensor ``name`` (of ``shape``) fills; [] if none."""
    if IGNORED.match(name):
        return []
    layer = LAYER.match(name)
    if layer is not None and int(layer.group(1)) >= layout.num_hidden_layers:
        return []  # a multi-token-prediction module (eh_proj, enorm, shared_head, ...): not used yet
    for pattern, axis, dim in table:
        m = re.fullmatch(pattern, name)
        if m is None:
            continue
        groups = m.groupdict()
        if axis == "replicated":
            return [Shard(name)]
        if axis == "vocab":
            start, stop = vocab_range(layout.vocab_size, layout.ctx.rank, layout.ctx.world_size)
            targets = [name]
            if name == "model.embed_tokens.weight" and layout.tie_word_embeddings:
                targets.append("lm_head.weight")
            return [Shard(t, 0, start, stop) for t in targets]
        if axis == "tp":
            start, stop = _part(shape[dim], layout.ctx.world_size, layout.ctx.rank, name)
            return [Shard(name, dim, start, stop)]
        expert = int(groups["expert"])
        if expert not in layout.local_experts:
            return []
        local = name.replace(f"experts.{expert}.", f"experts.{expert - layout.local_experts.start}.")
        start, stop = _part(shape[dim], layout.ctx.moe_tp_size, layout.ctx.moe_tp_rank, name)
        return [Shard(local, dim, start, stop)]
    raise UnexpectedTensor(f"checkpoint tensor {name!r} is not part of the DeepSeek architecture")


def plan(
    shapes: Iterable[tuple[str, tuple[int, ...]]], layout: Layout, table=SHARDING_TABLE
) -> dict[str, tuple[str, Shard]]:
    """{our parameter name: (checkpoint name, shard)} for every tensor this rank needs.

    ``shapes`` lists the checkpoint's (name, full shape) pairs; FP8 ``*_scale_inv`` companions are
    not listed here (they follow their weight). Pure: no I/O.
    """
    out: dict[str, tuple[str, Shard]] = {}
    for name, shape in shapes:
        for shard in shard_for(name, tuple(shape), layout, table):
            if shard.name in out and shard.name == "lm_head.weight" and name == "model.embed_tokens.weight":
                continue  # an explicit lm_head.weight wins over the tied embedding
            out[shard.name] = (name, shard)
    return out
