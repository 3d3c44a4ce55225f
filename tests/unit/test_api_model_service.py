import pytest
from pydantic import ValidationError

from fathom.api.model_service import ModelServiceSpec

PVC = {"pvc": {"claimName": "models"}, "path": "deepseek-v3"}


def test_engine_vocabulary_is_embedded_unchanged():
    spec = ModelServiceSpec.model_validate({"model": PVC, "engine": {"tensorParallelSize": 16, "expertParallelSize": 8}})
    assert spec.engine.tensor_parallel_size == 16 and spec.engine.expert_parallel_size == 8
    assert spec.model.checkpoint_dir == "/models/deepseek-v3"


@pytest.mark.parametrize("tp, gpus, per_node, ranks_per_pod, pods", [
    (1, 1, 8, 1, 1), (8, 1, 8, 8, 1), (16, 1, 8, 8, 2), (4, 2, 8, 4, 1), (4, 0, 8, 4, 1), (3, 1, 2, 2, 2),
])
def test_ranks_are_packed_per_node(tp, gpus, per_node, ranks_per_pod, pods):
    spec = ModelServiceSpec.model_validate({
        "model": PVC, "engine": {"tensorParallelSize": tp}, "resources": {"gpus": gpus, "gpusPerNode": per_node}})
    assert (spec.ranks_per_pod, spec.pods_per_instance) == (ranks_per_pod, pods)


def test_data_parallel_attention_counts_every_rank_and_takes_eplb():
    spec = ModelServiceSpec.model_validate({
        "model": PVC, "engine": {"tensorParallelSize": 2, "dataParallelSize": 8,
                                 "eplb": {"numRedundantExperts": 32, "stepInterval": 3000}},
        "resources": {"gpus": 1, "gpusPerNode": 8}})  # fmt: skip
    assert spec.ranks_per_instance == 16 and (spec.ranks_per_pod, spec.pods_per_instance) == (8, 2)
    assert spec.engine.moe_ep_size == 16 and spec.engine.eplb.num_redundant_experts == 32


@pytest.mark.parametrize("bad, needle", [
    ({"model": {}}, "exactly one of pvc, hostPath, uri"),
    ({"model": {"hostPath": "/mnt", "uri": "hf://deepseek-ai/DeepSeek-V3"}}, "exactly one"),
    ({"model": {"uri": "ftp://x"}}, "uri"),
    ({"model": PVC, "engine": {"tensorParallelSize": 4, "expertParallelSize": 3}}, "expert_parallel_size"),
    ({"model": PVC, "autoscaling": {"minReplicas": 5, "maxReplicas": 2}}, "minReplicas"),
    ({"model": PVC, "engine": {"dataParallelSize": 2, "tensorParallelSize": 2, "expertParallelSize": 2}},
     "expert_parallel_size must be 1 \\(default\\) or 4"),
    ({"model": PVC, "engine": {"eplb": {"numRedundantExperts": 8}}}, "needs tensor_parallel_size x data_parallel_size > 1"),
    ({"model": PVC, "engine": {"model": "/x"}}, "spec.engine.model"),
    ({"model": PVC, "resources": {"gpus": 4, "gpusPerNode": 2}}, "gpusPerNode"),
    ({"model": PVC, "replicaz": 2}, "replicaz"),
    ({"model": {"hostPath": "/mnt", "path": "a/../../etc"}, "replicas": 1}, "inside the volume"),
])
def test_invalid_specs_name_the_problem(bad, needle):
    with pytest.raises(ValidationError, match=needle):
        ModelServiceSpec.model_validate(bad)
