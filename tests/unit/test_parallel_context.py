import pytest
import torch

from fathom.parallel.context import ParallelContext, init_parallel


def test_single_is_w1_without_groups():
    ctx = ParallelContext.single()
    assert (ctx.rank, ctx.world_size, ctx.ep_size, ctx.tp_group) == (0, 1, 1, None)
    assert ctx.device == torch.device("cpu") and ctx.local_experts(8) == range(8)
    assert init_parallel(0, 1).world_size == 1


def test_expert_shard_layout_without_groups():
    # the layout arithmetic is independent of process groups: check it on a fake group object
    ctxs = [ParallelContext(rank=r, world_size=4, ep_size=2, tp_group=object()) for r in range(4)]
    assert [c.ep_rank for c in ctxs] == [0, 0, 1, 1]
    assert [c.moe_tp_rank for c in ctxs] == [0, 1, 0, 1] and ctxs[0].moe_tp_size == 2
    assert [c.local_experts(8) for c in ctxs] == [range(4), range(4), range(4, 8), range(4, 8)]


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"world_size": 4, "ep_size": 3, "tp_group": object()}, "expert_parallel_size=3"),
        ({"world_size": 0}, "world size"),
        ({"world_size": 4, "dp_size": 3, "tp_group": object()}, "data_parallel_size=3"),
        ({"world_size": 4, "ep_size": 4, "dp_size": 2, "tp_group": object()}, "all-to-all"),
        ({"world_size": 4, "ep_size": 2, "dp_size": 2, "moe_a2a": True, "tp_group": object(),
          "ep_group": object()}, "expert_parallel_size = world size 4"),
        ({"world_size": 4, "ep_size": 4, "dp_size": 4, "moe_a2a": True}, "ep_group"),
        ({"rank": 2, "world_size": 2, "tp_group": object()}, "rank 2"),
        ({"world_size": 2}, "tp_group"),
    ],
)
def test_bad_sizes_are_named(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        ParallelContext(**kwargs)


def test_experts_must_divide_over_ep():
    with pytest.raises(ValueError, match="n_routed_experts=6"):
        ParallelContext(rank=0, world_size=4, ep_size=4, tp_group=object()).local_experts(6)


def test_data_parallel_attention_groups():
    # W = 4 as D = 2 attention groups of TP = 2; experts over all 4 ranks (EP = W)
    ctxs = [ParallelContext(rank=r, world_size=4, ep_size=4, dp_size=2, moe_a2a=True, tp_group=object(),
                            ep_group=object()) for r in range(4)]  # fmt: skip
    assert [(c.dp_rank, c.tp_rank, c.tp_size) for c in ctxs] == [(0, 0, 2), (0, 1, 2), (1, 0, 2), (1, 1, 2)]
    assert [c.local_experts(8) for c in ctxs] == [range(2), range(2, 4), range(4, 6), range(6, 8)]


def test_redundant_experts_add_physical_slots():
    ctxs = [ParallelContext(rank=r, world_size=4, ep_size=4, dp_size=4, moe_a2a=True, ep_group=object(),
                            num_redundant_experts=4) for r in range(4)]  # fmt: skip
    assert ctxs[0].num_physical_experts(8) == 12
    assert [c.local_experts(8) for c in ctxs] == [range(3), range(3, 6), range(6, 9), range(9, 12)]
    with pytest.raises(ValueError, match="num_redundant_experts=4"):
        ctxs[0].local_experts(6)  # 10 slots do not split over 4 ranks
