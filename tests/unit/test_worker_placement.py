"""Placement of rank bundles (pure functions over `ray.nodes()`-shaped data)."""

from fathom.worker.placement import fits_one_node, rank_bundle, shortfall, strategy_for


def node(alive=True, **res):
    return {"Alive": alive, "Resources": res}


def test_bundles_per_rank():
    assert rank_bundle(True, 2) == {"GPU": 1.0, "CPU": 2}
    assert rank_bundle(False, 1) == {"CPU": 1}


def test_strict_pack_when_one_node_fits_else_pack():
    eight_gpus = [rank_bundle(True, 1)] * 8
    assert strategy_for(eight_gpus, [node(GPU=8, CPU=64), node(GPU=8, CPU=64)]) == "STRICT_PACK"
    sixteen = [rank_bundle(True, 1)] * 16
    assert strategy_for(sixteen, [node(GPU=8, CPU=64), node(GPU=8, CPU=64)]) == "PACK"
    four_cpu = [rank_bundle(False, 1)] * 4
    assert strategy_for(four_cpu, [node(CPU=2), node(CPU=2)]) == "PACK"
    assert not fits_one_node(four_cpu, [node(alive=False, CPU=8), node(CPU=2)])
    assert fits_one_node(four_cpu, [node(CPU=4)])


def test_shortfall_names_the_short_resource():
    two = [rank_bundle(False, 1)] * 2
    assert shortfall(two, {"CPU": 1.0}, {"CPU": 1.0}) == "they need 2 CPU and the cluster has 1"
    assert shortfall(two, {"CPU": 2.0}, {"CPU": 0.0}) == (
        "they need 2 CPU; the cluster has 2 but only 0 free (other replicas or jobs hold the rest)")
    gpus = [rank_bundle(True, 1)] * 4
    assert shortfall(gpus, {"CPU": 64.0, "GPU": 2.0}, {"CPU": 64.0, "GPU": 2.0}) == (
        "they need 4 GPU and the cluster has 2")
