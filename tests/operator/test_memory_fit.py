"""ModelFits: a ModelService whose ranks' GPUs cannot hold the model gets a condition with the
memory planner's numbers, and no pods (they would only die of OOM)."""

import json
from pathlib import Path

from fathom.api.memory_plan import ModelShape
from fathom.api.model_service import ModelServiceSpec
from fathom_operator.memory_fit import model_fits
from fathom_operator.reconcile import Observed, reconcile

V3 = ModelShape.from_config(json.loads((Path(__file__).parents[1] / "fixtures" / "deepseek_v3" / "config.json")
                                       .read_text())).to_wire()  # fmt: skip
NOW = "2026-11-29T12:00:00Z"


def spec(engine=None, architecture=V3, **resources) -> dict:
    model = {"pvc": {"claimName": "models"}, "path": "deepseek-ai/DeepSeek-R1"}
    if architecture is not None:
        model["architecture"] = architecture
    return {"model": model, "engine": {"tensorParallelSize": 8, "expertParallelSize": 8, **(engine or {})},
            "resources": {"gpus": 1, "gpusPerNode": 8, **resources}, "autoscaling": {"enabled": False}}


def obj(s: dict) -> dict:
    return {"metadata": {"name": "r1", "namespace": "ns", "uid": "u", "generation": 3}, "spec": s, "status": {}}


def conditions(status: dict) -> dict:
    return {c["type"]: c for c in status["conditions"]}


def test_fp8_r1_fits_one_h200_node_and_bf16_does_not():
    fits = model_fits(ModelServiceSpec.model_validate(spec(gpuType="h200")))
    assert fits[0] is True and fits[1] == "ModelFits"
    assert "79.3 GiB of FP8 weights per rank" in fits[2] and "KV cache" in fits[2]
    too_big = model_fits(ModelServiceSpec.model_validate(spec({"quantization": "none"}, gpuType="h200")))
    assert too_big[:2] == (False, "InsufficientGpuMemory")
    assert "needs 157.9 GiB of weights" in too_big[2] and "140.4 GiB" in too_big[2]


def test_gpu_memory_quantity_overrides_the_table_and_unknown_fit_is_no_condition():
    assert model_fits(ModelServiceSpec.model_validate(spec(gpuType="h200", gpuMemory="80Gi")))[0] is False
    assert model_fits(ModelServiceSpec.model_validate(spec(gpuMemory="200Gi")))[0] is True
    assert model_fits(ModelServiceSpec.model_validate(spec())) is None  # no GPU kind or memory
    assert model_fits(ModelServiceSpec.model_validate(spec(architecture=None, gpuType="h200"))) is None
    assert model_fits(ModelServiceSpec.model_validate(spec(gpus=0, gpuType="h200"))) is None  # CPU ranks


def test_a_model_too_big_for_its_gpus_gets_the_condition_and_no_pods():
    result = reconcile(obj(spec({"quantization": "none"}, gpuType="h200")), Observed(now=NOW))
    assert result.children is None
    assert result.status["phase"] == "Invalid"
    c = conditions(result.status)
    assert c["ModelFits"]["status"] == "False" and c["ModelFits"]["reason"] == "InsufficientGpuMemory"
    assert "157.9 GiB" in c["ModelFits"]["message"] and c["ModelFits"]["observedGeneration"] == 3
    assert c["Ready"]["status"] == "False" and c["Degraded"]["status"] == "True"


def test_a_model_that_fits_deploys_with_the_condition_true():
    result = reconcile(obj(spec(gpuType="h200")), Observed(now=NOW))
    assert result.children is not None and result.status["phase"] == "Deploying"
    assert conditions(result.status)["ModelFits"]["status"] == "True"
    plain = reconcile(obj(spec()), Observed(now=NOW))  # nothing to plan with: as before, no condition
    assert "ModelFits" not in conditions(plain.status)
