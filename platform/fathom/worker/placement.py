"""Where the W rank workers of one model instance go: one placement group, one bundle per rank.

Bundles are sized per rank ({"GPU": 1, "CPU": c} on CUDA clusters, {"CPU": c} otherwise). The
group is STRICT_PACK (one node) when some node can hold every bundle, else PACK (as few nodes as
possible), so the same code places an instance on 8 GPUs of one node or 16 GPUs over two."""

import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group


def rank_bundle(use_gpu: bool, cpus_per_rank: float) -> dict[str, float]:
    return {"GPU": 1.0, "CPU": cpus_per_rank} if use_gpu else {"CPU": cpus_per_rank}


def fits_one_node(bundles: list[dict[str, float]], nodes: list[dict]) -> bool:
    """Whether any alive node's total resources cover the sum of the bundles."""
    need: dict[str, float] = {}
    for b in bundles:
        for k, v in b.items():
            need[k] = need.get(k, 0.0) + v
    return any(n.get("Alive") and all(n["Resources"].get(k, 0.0) >= v for k, v in need.items()) for n in nodes)


def strategy_for(bundles: list[dict[str, float]], nodes: list[dict]) -> str:
    return "STRICT_PACK" if fits_one_node(bundles, nodes) else "PACK"


def create_rank_placement_group(world_size: int, use_gpu: bool, cpus_per_rank: float = 1.0,
                                timeout_s: float = 120.0) -> PlacementGroup:
    """Reserve W rank bundles; raises RuntimeError naming the shortfall if they cannot be placed."""
    bundles = [rank_bundle(use_gpu, cpus_per_rank) for _ in range(world_size)]
    strategy = strategy_for(bundles, ray.nodes())
    pg = placement_group(bundles, strategy=strategy, name="")
    ready, _ = ray.wait([pg.ready()], timeout=timeout_s)
    if not ready:
        remove_placement_group(pg)
        raise RuntimeError(f"cannot place {world_size} rank workers within {timeout_s:.0f}s: "
                           + shortfall(bundles, ray.cluster_resources(), ray.available_resources()))
    return pg


def shortfall(bundles: list[dict[str, float]], total: dict[str, float], free: dict[str, float]) -> str:
    """Which resource is short for `bundles`, in words (the cluster's total and what is free now)."""
    need: dict[str, float] = {}
    for b in bundles:
        for k, v in b.items():
            need[k] = need.get(k, 0.0) + v
    for k, v in sorted(need.items()):
        if total.get(k, 0.0) < v:
            return f"they need {v:g} {k} and the cluster has {total.get(k, 0.0):g}"
    for k, v in sorted(need.items()):
        if free.get(k, 0.0) < v:
            return (f"they need {v:g} {k}; the cluster has {total[k]:g} but only {free.get(k, 0.0):g} free "
                    "(other replicas or jobs hold the rest)")
    return f"they need {need} on as few nodes as possible; no set of nodes has them free at once"
