"""One rank's model built on the meta device from a config.json alone (no memory, no checkpoint),
with the loader's own format decisions, and its bytes by kind: the measured side of the memory
planner (``fathom.api.memory_plan`` does the same arithmetic without torch; tests keep them equal,
and equal to the bytes of the tensors a real load allocates)."""

from __future__ import annotations

import torch

from fathom.api.memory_plan import KINDS, kind_of
from fathom.model.config import DeepseekConfig
from fathom.model.deepseek import DeepseekForCausalLM
from fathom.model.loader import build_model
from fathom.parallel.context import ParallelContext

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_NO_GROUP = object()  # a stand-in process group: building a rank's shapes talks to no one


def meta_model(config: DeepseekConfig, tp: int = 1, ep: int = 1, rank: int = 0, dtype: str = "bfloat16",
               quantization: str = "auto", dp: int = 1, redundant: int = 0) -> DeepseekForCausalLM:  # fmt: skip
    """Rank ``rank`` of a ``dp`` x TP ``tp`` / EP ``ep`` instance (``redundant`` extra expert slots),
    every tensor on the meta device."""
    ctx = ParallelContext(rank=rank, world_size=tp * dp, ep_size=ep, device=torch.device("meta"),
                          tp_group=_NO_GROUP if tp > 1 else None, dp_size=dp, moe_a2a=dp > 1,
                          ep_group=_NO_GROUP if dp > 1 else None, num_redundant_experts=redundant)  # fmt: skip
    return build_model(config, ctx, DTYPES[dtype], quantization)


def tensor_bytes(model: torch.nn.Module) -> dict[str, int]:
    """Bytes of the model's parameters and buffers by kind (``fathom.api.memory_plan.KINDS``)."""
    out = dict.fromkeys(KINDS, 0)
    for name, t in (*model.named_parameters(), *model.named_buffers()):
        out[kind_of(name)] += t.numel() * t.element_size()
    return out


def rank_weight_bytes(config: DeepseekConfig, tp: int = 1, ep: int = 1, dtype: str = "bfloat16",
                      quantization: str = "auto", dp: int = 1, redundant: int = 0) -> list[dict[str, int]]:  # fmt: skip
    """Bytes by kind of every rank of the instance, from meta-device builds."""
    return [tensor_bytes(meta_model(config, tp, ep, r, dtype, quantization, dp, redundant)) for r in range(tp * dp)]
