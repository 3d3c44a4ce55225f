"""Expert-parallel load balancing (EPLB): where to put E logical experts' P = E + R physical
replicas over N ranks so that every rank gets about the same number of routed tokens.

DeepSeek-V3's hierarchical policy (deepseek-ai/EPLB), per MoE layer, from per-expert token counts:

1. pack the expert groups onto nodes, balancing the nodes' tokens (groups stay whole, so the
   group-limited routing keeps a token's experts within few nodes);
2. inside each node, give the R / nodes redundant replicas one by one to the expert whose load
   per replica is highest;
3. pack each node's physical replicas onto its ranks, P / N per rank, heaviest first onto the
   lightest rank that still has a free slot.

When the groups do not divide over the nodes it runs the same with one group and one node
(global policy). Plain Python (no torch): deterministic, so every rank computes the same
placement from the same counts. A replica is assumed to take 1/replicas of its expert's tokens
(the gate spreads them round-robin, ``fathom.model.layers.expert_placement``).
"""

from __future__ import annotations

from collections.abc import Sequence


def balanced_packing(weights: Sequence[float], num_packs: int) -> list[tuple[int, int]]:
    """(pack, position in pack) of each item: exactly len(weights) / num_packs items per pack,
    heaviest first onto the lightest pack that has room (ties: the lower pack)."""
    n = len(weights)
    if num_packs < 1 or n % num_packs:
        raise ValueError(f"{n} items do not pack evenly into {num_packs} packs")
    per = n // num_packs
    loads, sizes, out = [0.0] * num_packs, [0] * num_packs, [(0, 0)] * n
    for i in sorted(range(n), key=lambda i: -weights[i]):
        pack = min((p for p in range(num_packs) if sizes[p] < per), key=lambda p: loads[p])
        out[i] = (pack, sizes[pack])
        loads[pack] += weights[i]
        sizes[pack] += 1
    return out


def replicate(weights: Sequence[float], num_physical: int) -> list[int]:
    """Logical expert of each of ``num_physical`` replicas: one of each expert, then every extra
    replica to the expert with the highest load per replica (ties: the lower id)."""
    n = len(weights)
    if num_physical < n:
        raise ValueError(f"{num_physical} physical experts cannot hold {n} logical ones")
    phy2log, count = list(range(n)), [1] * n
    for _ in range(num_physical - n):
        e = max(range(n), key=lambda e: weights[e] / count[e])
        phy2log.append(e)
        count[e] += 1
    return phy2log


def rebalance_layer(weights: Sequence[float], num_physical: int, num_groups: int, num_nodes: int,
                    num_ranks: int) -> list[int]:  # fmt: skip
    """Logical expert of each physical slot (slot p on rank p // (num_physical / num_ranks)) for one
    MoE layer with per-expert token counts ``weights``."""
    E = len(weights)
    if num_physical % num_ranks or num_ranks % num_nodes:
        raise ValueError(
            f"{num_physical} physical experts over {num_ranks} ranks on {num_nodes} nodes: uneven"
        )
    if num_groups < 1 or E % num_groups or num_groups % num_nodes:
        num_groups, num_nodes = 1, 1  # the global policy
    group_size, per_rank = E // num_groups, num_physical // num_ranks
    ranks_per_node, phys_per_node = num_ranks // num_nodes, num_physical // num_nodes
    group_loads = [sum(weights[g * group_size : (g + 1) * group_size]) for g in range(num_groups)]
    node_experts: list[list[int]] = [[] for _ in range(num_nodes)]
    for g, (node, _) in sorted(enumerate(balanced_packing(group_loads, num_nodes)), key=lambda x: x[1]):
        node_experts[node] += range(g * group_size, (g + 1) * group_size)
    phy2log = [-1] * num_physical
    for node, experts in enumerate(node_experts):
        local = replicate([weights[e] for e in experts], phys_per_node)  # node-local expert indices
        count = [local.count(i) for i in range(len(experts))]
        per_replica = [weights[experts[i]] / count[i] for i in local]
        for i, (rank, pos) in enumerate(balanced_packing(per_replica, ranks_per_node)):
            phy2log[(node * ranks_per_node + rank) * per_rank + pos] = experts[local[i]]
    return phy2log


def rank_loads(weights: Sequence[float], phy2log: Sequence[int], num_ranks: int) -> list[float]:
    """Tokens each rank receives under ``phy2log`` when a replica takes 1/replicas of its expert's."""
    count = [0] * len(weights)
    for e in phy2log:
        count[e] += 1
    per_rank = len(phy2log) // num_ranks
    return [
        sum(weights[e] / count[e] for e in phy2log[r * per_rank : (r + 1) * per_rank])
        for r in range(num_ranks)
    ]


def imbalance(loads: Sequence[float]) -> float:
    """max / mean of the ranks' loads (1.0 is perfect balance; 1.0 when nothing was routed)."""
    mean = sum(loads) / len(loads)
    return max(loads) / mean if mean > 0 else 1.0
