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
        ({"world_size": 0}, "tensor_parallel_size"),
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
