"""Sharding as data: which slice of each checkpoint tensor a rank holds, and under what name.

``SHARDING_TABLE`` maps checkpoint tensor names (regexes over the Hugging Face names) to how they
are split. ``plan`` is a pure function of (table, layout, checkpoint names) giving, for every
tensor this rank needs, the slice to read and the ``Slot`` of our parameters it fills. Axes:

* ``replicated``: the whole tensor on every rank;
* ``tp``: split in TP equal parts along ``dim`` (TP: the ranks of an attention group), part
  ``tp_rank`` (heads, dense/shared MLP width);
* ``vocab``: rows split in TP parts of ceil(V / TP), part ``tp_rank`` (embedding, LM head);
* ``expert``: only experts of this rank's expert shard, each split in W/EP equal parts along
  ``dim``, part ``moe_tp_rank`` (TP inside EP), and stacked (``STACKED``) by physical slot: the
  slots p of the shard (``ParallelContext.local_experts``) initially hold expert p % E (with no
  redundant experts, p = e), and expert e's slices of ``gate_proj`` and ``up_proj`` fill
  ``mlp.experts.w13[p - first local slot]`` (gate rows, then up rows), its ``down_proj`` slice
  ``mlp.experts.w2[p - first local slot]``.

Layers at index >= num_hidden_layers (the multi-token-prediction modules) are skipped, except the
first, ``mtp_layer``, when the layout loads it (``fathom.model.mtp``: a decoder block, sharded as
the others, plus its replicated norms and ``eh_proj`` and its vocab-split head and embedding).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

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
    (L + r"mlp\.experts\.(?P<expert>\d+)\.(?P<proj>gate_proj|up_proj)\.weight", "expert", 0),
    (L + r"mlp\.experts\.(?P<expert>\d+)\.(?P<proj>down_proj)\.weight", "expert", 1),
    (L + r"mlp\.gate\.(weight|e_score_correction_bias)", "replicated", None),
    (L + r"(enorm|hnorm|eh_proj|shared_head\.norm)\.weight", "replicated", None),  # MTP
    (L + r"(shared_head\.head|embed_tokens)\.weight", "vocab", 0),  # MTP
)
# Routed experts are stacked per layer (the gpt-fast / vLLM FusedMoE layout), this rank's in id order:
# w13 [E_local, 2·I_r, H] holds each expert's gate_proj rows then its up_proj rows, w2 [E_local, H, I_r]
# its down_proj. Projection -> (our parameter in mlp.experts, row block of the expert it fills, of how many).
STACKED = {"gate_proj": ("w13", 0, 2), "up_proj": ("w13", 1, 2), "down_proj": ("w2", 0, 1)}
STACKED_PARAM = re.compile(r"model\.layers\.(\d+)\.mlp\.experts\.(w13|w2)")
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
    mtp_layer: int | None = None  # the MTP module loaded (num_hidden_layers), or None

    @property
    def local_experts(self) -> range:
        return self.ctx.local_experts(self.n_routed_experts)


class Slot(NamedTuple):
    """A place in our parameters: all of parameter ``name``, or, of a stacked one, row block
    ``block[0]`` of ``block[1]`` equal blocks of expert ``index`` (``name[index]``)."""

    name: str
    index: int | None = None
    block: tuple[int, int] = (0, 1)

    def view(self, param):
        """The part of ``param`` (the parameter called ``name``) that this slot is."""
        if self.index is None:
            return param
        k, n = self.block
        return param[self.index].chunk(n)[k]


@dataclass(frozen=True)
class Shard:
    """Read ``[start, stop)`` of the checkpoint tensor along ``dim`` (None: all of it) into ``slot``."""

    slot: Slot
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
    if layer is not None and layout.num_hidden_layers <= int(layer.group(1)) != layout.mtp_layer:
        return []  # a multi-token-prediction module (eh_proj, enorm, shared_head, ...) not loaded
    for pattern, axis, dim in table:
        m = re.fullmatch(pattern, name)
        if m is None:
            continue
        groups = m.groupdict()
        if axis == "replicated":
            return [Shard(Slot(name))]
        if axis == "vocab":
            start, stop = vocab_range(layout.vocab_size, layout.ctx.tp_rank, layout.ctx.tp_size)
            targets = [name]
            if name == "model.embed_tokens.weight" and layout.tie_word_embeddings:
                targets.append("lm_head.weight")
            return [Shard(Slot(t), 0, start, stop) for t in targets]
        if axis == "tp":
            start, stop = _part(shape[dim], layout.ctx.tp_size, layout.ctx.tp_rank, name)
            return [Shard(Slot(name), dim, start, stop)]
        return _expert_shard(name, shape, dim, groups, layout)
    raise UnexpectedTensor(f"checkpoint tensor {name!r} is not part of the DeepSeek architecture")


def _expert_shard(name: str, shape: tuple[int, ...], dim: int, groups: dict, layout: Layout) -> list[Shard]:
    """This rank's parts of routed expert tensor ``name`` in its stacked parameter: one per local
    physical slot that initially holds the expert (slot p holds expert p % E); [] if none."""
    expert, local = int(groups["expert"]), layout.local_experts
    param, block, blocks = STACKED[groups["proj"]]
    start, stop = _part(shape[dim], layout.ctx.moe_tp_size, layout.ctx.moe_tp_rank, name)
    return [
        Shard(Slot(f"model.layers.{groups['layer']}.mlp.experts.{param}", p - local.start, (block, blocks)),
              dim, start, stop)
        for p in local
        if p % layout.n_routed_experts == expert
    ]  # fmt: skip


def sources(ours: str, layout: Layout) -> dict[Slot, str]:
    """{slot: checkpoint tensor filling it} for every slot of our parameter ``ours`` on this rank: the
    inverse of ``shard_for`` (a tied LM head aside), to name the tensors a checkpoint lacks."""
    m = STACKED_PARAM.fullmatch(ours)
    if m is None:
        return {Slot(ours): ours}
    layer, param = m.groups()
    local = layout.local_experts
    return {
        Slot(ours, p - local.start, (block, blocks)):
            f"model.layers.{layer}.mlp.experts.{p % layout.n_routed_experts}.{proj}.weight"
        for p in local
        for proj, (stack, block, blocks) in STACKED.items()
        if stack == param
    }


def plan(
    shapes: Iterable[tuple[str, tuple[int, ...]]], layout: Layout, table=SHARDING_TABLE
) -> dict[Slot, tuple[str, Shard]]:
    """{slot of our parameters: (checkpoint name, shard)} for every tensor this rank needs.

    ``shapes`` lists the checkpoint's (name, full shape) pairs; FP8 ``*_scale_inv`` companions are
    not listed here (they follow their weight). Pure: no I/O.
    """
    out: dict[Slot, tuple[str, Shard]] = {}
    for name, shape in shapes:
        for shard in shard_for(name, tuple(shape), layout, table):
            if shard.slot in out and name == "model.embed_tokens.weight":
                continue  # an explicit lm_head.weight wins over the tied embedding
            out[shard.slot] = (name, shard)
    return out
