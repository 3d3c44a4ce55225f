"""The sharding table and plan as pure functions: names and slices per rank, no I/O."""

import pytest
import torch

from fathom.model.weights.sharding import Layout, Shard, Slot, UnexpectedTensor, plan, shard_for, sources
from fathom.parallel.context import ParallelContext

SHAPES = {
    "model.embed_tokens.weight": (10, 8),
    "lm_head.weight": (10, 8),
    "model.layers.0.self_attn.q_b_proj.weight": (16, 6),
    "model.layers.0.self_attn.kv_a_proj_with_mqa.weight": (6, 8),
    "model.layers.0.self_attn.o_proj.weight": (8, 12),
    "model.layers.0.mlp.down_proj.weight": (8, 32),
    "model.layers.1.mlp.experts.5.gate_proj.weight": (4, 8),
    "model.layers.1.mlp.experts.5.down_proj.weight": (8, 4),
    "model.layers.1.mlp.shared_experts.up_proj.weight": (8, 8),
    "model.layers.1.mlp.gate.e_score_correction_bias": (8,),
    "model.layers.2.eh_proj.weight": (8, 16),  # MTP layer (num_hidden_layers = 2)
}


def layout(rank, world, ep, tie=False):
    ctx = ParallelContext(rank=rank, world_size=world, ep_size=ep, tp_group=object() if world > 1 else None)
    return Layout(ctx, n_routed_experts=8, num_hidden_layers=2, vocab_size=10, tie_word_embeddings=tie)


def test_tp_and_vocab_splits():
    lay = layout(rank=3, world=4, ep=1)
    s = lambda n: shard_for(n, SHAPES[n], lay)
    embed = "model.embed_tokens.weight"
    assert s(embed) == [Shard(Slot(embed), 0, 9, 10)]  # ceil(10/4)=3
    assert s("model.layers.0.self_attn.q_b_proj.weight") == [
        Shard(Slot("model.layers.0.self_attn.q_b_proj.weight"), 0, 12, 16)
    ]
    assert s("model.layers.0.self_attn.o_proj.weight") == [
        Shard(Slot("model.layers.0.self_attn.o_proj.weight"), 1, 9, 12)
    ]
    assert s("model.layers.0.mlp.down_proj.weight")[0].dim == 1
    assert s("model.layers.0.self_attn.kv_a_proj_with_mqa.weight") == [
        Shard(Slot("model.layers.0.self_attn.kv_a_proj_with_mqa.weight"))
    ]
    assert s("model.layers.2.eh_proj.weight") == []


@pytest.mark.parametrize(
    "rank, world, ep, local, part",
    [(0, 1, 1, 5, (0, 4)), (1, 2, 1, 5, (2, 4)), (0, 2, 2, None, None), (1, 2, 2, 1, (0, 4)),
     (2, 4, 2, 1, (0, 2)), (3, 4, 2, 1, (2, 4)), (1, 4, 2, None, None)],
)  # fmt: skip
def test_experts_live_on_their_ep_shard_split_by_tp_inside_ep(rank, world, ep, local, part):
    lay = layout(rank, world, ep)
    got = shard_for("model.layers.1.mlp.experts.5.gate_proj.weight", (4, 8), lay)
    if local is None:
        assert got == []
    else:
        assert got == [Shard(Slot("model.layers.1.mlp.experts.w13", local, (0, 2)), 0, *part)]


def test_experts_are_stacked_gate_then_up_rows_of_w13_and_down_in_w2():
    lay = layout(rank=3, world=4, ep=2)  # experts 4-7, second half of each intermediate dim
    s = lambda proj, shape: shard_for(f"model.layers.1.mlp.experts.6.{proj}.weight", shape, lay)
    w13, w2 = "model.layers.1.mlp.experts.w13", "model.layers.1.mlp.experts.w2"
    assert s("gate_proj", (4, 8)) == [Shard(Slot(w13, 2, (0, 2)), 0, 2, 4)]
    assert s("up_proj", (4, 8)) == [Shard(Slot(w13, 2, (1, 2)), 0, 2, 4)]
    assert s("down_proj", (8, 4)) == [Shard(Slot(w2, 2, (0, 1)), 1, 2, 4)]
    w13_rows = torch.arange(3 * 4 * 8).view(3, 4, 8)  # [E_local, 2·I_r, H] with I_r = 2
    assert torch.equal(Slot(w13, 2, (1, 2)).view(w13_rows), w13_rows[2, 2:4])


@pytest.mark.parametrize("rank, world, ep", [(0, 1, 1), (1, 2, 1), (1, 2, 2), (2, 4, 2)])
def test_sources_name_the_checkpoint_tensor_of_every_slot(rank, world, ep):
    """``sources`` is shard_for's inverse: each slot of a parameter comes from the tensor it names."""
    lay = layout(rank, world, ep)
    shapes = {"gate_proj": (4, 8), "up_proj": (4, 8), "down_proj": (8, 4)}
    for param, n in (("w13", 2), ("w2", 1)):
        got = sources(f"model.layers.1.mlp.experts.{param}", lay)
        assert len(got) == n * len(lay.local_experts)
        for slot, name in got.items():
            assert [s.slot for s in shard_for(name, shapes[name.split(".")[-2]], lay)] == [slot]
    name = "model.layers.0.self_attn.o_proj.weight"
    assert sources(name, lay) == {Slot(name): name}


def test_plan_ties_the_lm_head_only_when_asked_and_absent():
    names = [(n, s) for n, s in SHAPES.items() if n != "lm_head.weight"]
    head = Slot("lm_head.weight")
    tied = plan(names, layout(0, 2, 1, tie=True))
    assert tied[head] == ("model.embed_tokens.weight", Shard(head, 0, 0, 5))
    assert head not in plan(names, layout(0, 2, 1))
    explicit = plan(list(SHAPES.items()), layout(0, 2, 1, tie=True))
    assert explicit[head][0] == "lm_head.weight"


def test_unknown_tensors_and_uneven_splits_are_errors():
    with pytest.raises(UnexpectedTensor, match="model.layers.0.bogus"):
        shard_for("model.layers.0.bogus", (1,), layout(0, 1, 1))
    with pytest.raises(ValueError, match="q_b_proj"):
        shard_for("model.layers.0.self_attn.q_b_proj.weight", (15, 6), layout(0, 2, 1))


@pytest.mark.parametrize(
    "world, ep, needle", [(8, 1, "num_attention_heads=4"), (4, 4, "moe_intermediate_size"), (16, 16, "heads")]
)
def test_model_that_cannot_split_over_the_ranks_is_refused_by_name(world, ep, needle):
    from fathom.model.config import DeepseekConfig
    from fathom.model.deepseek import DeepseekForCausalLM
    from support.model_testing import tiny_v3_kwargs

    kw = tiny_v3_kwargs(moe_intermediate_size=30)
    config = DeepseekConfig.from_dict({"model_type": "deepseek_v3", **kw})
    ctx = ParallelContext(rank=0, world_size=world, ep_size=ep, tp_group=object())
    with pytest.raises(ValueError, match=needle):
        DeepseekForCausalLM(config, ctx)


def test_the_mtp_module_is_skipped_unless_loaded_then_sharded_like_a_layer():
    """Layer L = num_hidden_layers is DeepSeek-V3's MTP module: skipped by default; with
    ``mtp_layer`` its block splits as a decoder layer's, its norms and eh_proj are replicated, its
    head and embedding split by vocab. Further MTP modules are always skipped."""
    off = layout(rank=1, world=2, ep=1)
    on = Layout(off.ctx, n_routed_experts=8, num_hidden_layers=2, vocab_size=10, mtp_layer=2)
    assert shard_for("model.layers.2.eh_proj.weight", (4, 8), off) == []
    assert shard_for("model.layers.2.eh_proj.weight", (4, 8), on) == [Shard(Slot("model.layers.2.eh_proj.weight"))]
    assert shard_for("model.layers.2.enorm.weight", (4,), on) == [Shard(Slot("model.layers.2.enorm.weight"))]
    head = "model.layers.2.shared_head.head.weight"
    assert shard_for(head, (10, 4), on) == [Shard(Slot(head), 0, 5, 10)]
    embed = "model.layers.2.embed_tokens.weight"
    assert shard_for(embed, (10, 4), on) == [Shard(Slot(embed), 0, 5, 10)]
    q_b = "model.layers.2.self_attn.q_b_proj.weight"
    assert shard_for(q_b, (8, 4), on) == [Shard(Slot(q_b), 0, 4, 8)]
    assert shard_for("model.layers.3.eh_proj.weight", (4, 8), on) == []
