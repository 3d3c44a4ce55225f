"""EPLB placement (pure) and the gate's logical -> physical map, on one process."""

import random

import pytest
import torch

from fathom.model.eplb import balanced_packing, imbalance, rank_loads, rebalance_layer, replicate
from fathom.model.layers.expert_placement import ExpertPlacement
from fathom.parallel.context import ParallelContext


def zipf(n: int, seed: int, s: float = 1.2) -> list[float]:
    w = [1000 / (i + 1) ** s for i in range(n)]
    random.Random(seed).shuffle(w)
    return w


def test_packing_fills_every_pack_exactly_and_balances():
    out = balanced_packing([9, 1, 8, 2, 7, 3], 3)
    packs = [[i for i, (p, _) in enumerate(out) if p == k] for k in range(3)]
    assert [len(p) for p in packs] == [2, 2, 2]
    assert sorted(sum([9, 1, 8, 2, 7, 3][i] for i in p) for p in packs) == [10, 10, 10]
    assert sorted(pos for _, pos in out) == [0, 0, 0, 1, 1, 1]
    with pytest.raises(ValueError, match="pack evenly"):
        balanced_packing([1, 2, 3], 2)


def test_replicas_go_to_the_heaviest_per_replica():
    assert replicate([10, 1, 4], 5) == [0, 1, 2, 0, 0]  # per replica 10 -> 5 (> 4) -> 3.33
    assert replicate([10, 1, 4], 6) == [0, 1, 2, 0, 0, 2]


@pytest.mark.parametrize(
    "E, ranks, redundant, groups, nodes", [(16, 4, 4, 4, 1), (64, 8, 8, 8, 1), (256, 32, 32, 8, 1)]
)
def test_skewed_load_balances_within_1_15(E, ranks, redundant, groups, nodes):
    w = zipf(E, seed=E)
    before = imbalance(rank_loads(w, list(range(E)), ranks))
    phy2log = rebalance_layer(w, E + redundant, groups, nodes, ranks)
    assert sorted(set(phy2log)) == list(range(E)) and len(phy2log) == E + redundant
    after = imbalance(rank_loads(w, phy2log, ranks))
    assert before > 1.5 and after <= 1.15, (before, after)


def test_hierarchical_keeps_groups_on_one_node():
    w = zipf(16, seed=3)
    phy2log = rebalance_layer(w, 24, num_groups=4, num_nodes=2, num_ranks=4)  # 12 slots per node
    for node in range(2):
        groups = {e // 4 for e in phy2log[node * 12 : (node + 1) * 12]}
        assert len(groups) == 2  # two whole groups per node, their replicas with them
    assert imbalance(rank_loads(w, phy2log, 4)) < imbalance(rank_loads(w, list(range(16)), 4))


def test_gate_spreads_an_expert_over_its_replicas():
    ctx = ParallelContext(num_redundant_experts=2)
    placement = ExpertPlacement(4, ctx)
    placement.set([0, 1, 2, 3, 0, 0])  # expert 0 has three replicas: slots 0, 4, 5
    ids = torch.tensor([[0, 1]] * 6)
    slots = placement.physical(ids)
    assert sorted(slots[:, 0].tolist()) == [0, 0, 4, 4, 5, 5] and slots[:, 1].tolist() == [1] * 6
    assert torch.equal(placement.physical(ids[3:], first_row=3), slots[3:])  # a share keeps its rows' turns
    placement.count(ids)
    assert placement.load.tolist() == [6, 6, 0, 0]
    with pytest.raises(ValueError, match="all 4 experts"):
        placement.set([0, 1, 2, 0, 0, 0])


def test_migrate_refills_every_slot_with_its_new_expert_on_one_rank():
    from fathom.model.layers.expert_placement import migrate

    ctx = ParallelContext(num_redundant_experts=2)
    old, new = [0, 1, 2, 3, 0, 1], [3, 2, 1, 0, 3, 3]
    values = torch.tensor([float(e) for e in old])
    stacks = {"w": values[:, None].repeat(1, 3), "w_fp8": values[:, None].repeat(1, 2).to(torch.float8_e4m3fn)}
    migrate(stacks, range(6), old, new, ctx)
    assert stacks["w"][:, 0].tolist() == [3, 2, 1, 0, 3, 3]
    assert stacks["w_fp8"].float()[:, 1].tolist() == [3, 2, 1, 0, 3, 3]


def test_replicas_and_a_rebalance_leave_the_model_function_unchanged(tmp_path):
    """One rank, the all-reduce MoE path: 4 redundant slots, rebalanced on the counts of a forward
    (experts permuted and replicated, weights moved) -> the same logits, grouped and dense."""
    from fathom.model.loader import load_model
    from fathom.model.rebalance import rebalance
    from support import model_testing as T

    T.save_reference(tmp_path, "v3", seed=3)
    prompts = [[5, 17, 99, 3, 200, 41, 8], [9, 9, 12]]
    base = T.full_logits(load_model(tmp_path), prompts)
    model = load_model(tmp_path, ParallelContext(num_redundant_experts=4))
    T.full_logits(model, prompts)  # counts
    result = rebalance(model)
    assert result.moved > 0 and all(len(set(m.placement.phy2log)) == 8 for m in model.moe_layers())
    assert sum(map(sum, result.expert_load)) == 2 * 10 * 3  # MoE layers x tokens x top-3
    for dense_limit in (0, 10_000):
        model.set_fast_paths(moe_dense_limit=dense_limit)
        for ours, ref in zip(T.full_logits(model, prompts), base, strict=True):
            assert float((ours - ref).abs().max()) <= T.tolerance(ref)
