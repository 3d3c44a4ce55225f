"""Who this rank is inside one model instance, and the process groups it talks over.

A model instance runs on ``W`` ranks (``world_size``) = ``dp_size`` attention groups (D,
data-parallel attention) × ``tp_size`` ranks each (TP = W / D; D = 1 is plain tensor parallelism):

* rank ``r`` is in attention group ``dp_rank = r // TP`` as ``tp_rank = r % TP``. Attention heads,
  dense MLPs, shared experts and vocab are split over the TP ranks of its group (``tp_group``); each
  group runs its own requests with its own latent KV cache;
* routed experts live in ``P = E + num_redundant_experts`` physical slots (EPLB replicas; slot p
  initially holds logical expert ``p % E``), split over ``ep_size`` expert shards, ``ep_size``
  dividing W: rank ``r`` holds shard ``ep_rank = r // (W // ep_size)``, slots
  ``[ep_rank * P / ep_size, (ep_rank + 1) * P / ep_size)``; the ``W // ep_size`` ranks sharing a
  shard split each expert's intermediate dimension (``moe_tp_rank`` of ``moe_tp_size``).

The MoE combines either by one all-reduce over the (replicated) tokens of the group (``moe_a2a``
False: D = 1 only) or by all-to-all dispatch/combine over all W ranks (``ep_group``; needs
ep_size = W; required when D > 1). Model code receives a ``ParallelContext`` explicitly; there is
no global state, and W = 1 runs the same code (collectives are no-ops without a group).
See docs/sharding.md.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class ParallelContext:
    """This rank's place in one model instance (W = ``world_size`` ranks in ``dp_size`` attention
    groups, ``ep_size`` expert shards)."""

    rank: int = 0
    world_size: int = 1
    ep_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    tp_group: Any = None  # torch ProcessGroup over this rank's attention group; None when TP == 1
    dp_size: int = 1
    moe_a2a: bool = False  # MoE dispatch/combine by all-to-all over ep_group (else one all-reduce)
    ep_group: Any = None  # torch ProcessGroup over all W ranks (the all-to-all); None when W == 1
    num_redundant_experts: int = 0

    def __post_init__(self) -> None:
        check_sizes(self.world_size, self.ep_size, self.dp_size, self.moe_a2a)
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is outside world_size {self.world_size}")
        if self.tp_size > 1 and self.tp_group is None:
            raise ValueError(f"tensor parallel size {self.tp_size} > 1 needs a tp_group (use init_parallel)")
        if self.moe_a2a and self.world_size > 1 and self.ep_group is None:
            raise ValueError("all-to-all MoE over more than one rank needs an ep_group (use init_parallel)")
        if self.num_redundant_experts < 0:
            raise ValueError(f"num_redundant_experts must be >= 0, got {self.num_redundant_experts}")

    @classmethod
    def single(cls, device: str | torch.device = "cpu") -> ParallelContext:
        """W = 1, EP = 1: the whole model on one device, no process groups."""
        return cls(device=torch.device(device))

    @property
    def tp_size(self) -> int:
        """Ranks of one attention group (they split heads, dense MLPs, shared experts, vocab)."""
        return self.world_size // self.dp_size

    @property
    def tp_rank(self) -> int:
        return self.rank % self.tp_size

    @property
    def dp_rank(self) -> int:
        """The attention group this rank belongs to."""
        return self.rank // self.tp_size

    @property
    def moe_tp_size(self) -> int:
        """Ranks that share one expert shard and split each expert's intermediate dim."""
        return self.world_size // self.ep_size

    @property
    def ep_rank(self) -> int:
        """Index of the expert shard this rank holds."""
        return self.rank // self.moe_tp_size

    @property
    def moe_tp_rank(self) -> int:
        return self.rank % self.moe_tp_size

    def num_physical_experts(self, n_routed_experts: int) -> int:
        """Expert slots over all shards: the logical experts plus their redundant replicas."""
        return n_routed_experts + self.num_redundant_experts

    def local_experts(self, n_routed_experts: int) -> range:
        """Physical slots of the routed experts whose weights live on this rank, in the order the
        rank stacks them (local index = slot - start; with no redundant experts, slot = expert id).
        The one answer: the MoE layer and the loader's sharding plan both ask here."""
        physical = self.num_physical_experts(n_routed_experts)
        if physical % self.ep_size:
            raise ValueError(
                f"n_routed_experts={n_routed_experts} + num_redundant_experts={self.num_redundant_experts}"
                f" is not divisible by ep_size={self.ep_size}"
            )
        if self.num_redundant_experts > n_routed_experts:
            raise ValueError(f"num_redundant_experts={self.num_redundant_experts} exceeds n_routed_experts")
        per = physical // self.ep_size
        return range(self.ep_rank * per, (self.ep_rank + 1) * per)


def check_sizes(world_size: int, ep_size: int, dp_size: int = 1, moe_a2a: bool = False) -> None:
    """Raise a ValueError naming the bad size unless the sizes describe a valid instance."""
    if world_size < 1:
        raise ValueError(f"world size (tensor x data parallel) must be >= 1, got {world_size}")
    if ep_size < 1 or world_size % ep_size:
        raise ValueError(f"expert_parallel_size={ep_size} must be >= 1 and divide the world size {world_size}")
    if dp_size < 1 or world_size % dp_size:
        raise ValueError(f"data_parallel_size={dp_size} must be >= 1 and divide the world size {world_size}")
    if dp_size > 1 and not moe_a2a:
        raise ValueError("data_parallel_size > 1 needs the all-to-all MoE (moe_a2a)")
    if moe_a2a and ep_size != world_size:
        raise ValueError(f"the all-to-all MoE needs expert_parallel_size = world size {world_size}, got {ep_size}")


def default_backend(device: torch.device) -> str:
    """nccl for CUDA devices, gloo otherwise."""
    return "nccl" if device.type == "cuda" else "gloo"


def init_parallel(
    rank: int,
    world_size: int,
    ep_size: int = 1,
    *,
    dp_size: int = 1,
    moe_a2a: bool | None = None,
    num_redundant_experts: int = 0,
    master_addr: str = "127.0.0.1",
    master_port: int = 29500,
    device: str | torch.device | None = None,
    backend: str | None = None,
    timeout_s: float = 300.0,
) -> ParallelContext:
    """Join (or create) the default torch.distributed group for this rank and build its context.

    Called once per rank process (test subprocesses, Ray rank workers). ``device`` defaults to
    ``cuda:<local rank>`` when CUDA is available, else cpu; ``backend`` to nccl on CUDA, gloo on CPU.
    ``moe_a2a`` defaults to ``dp_size > 1``. Every rank creates the D attention groups' process
    groups in the same order (torch.distributed requires it). W = 1 builds no process group at all.
    """
    moe_a2a = dp_size > 1 if moe_a2a is None else moe_a2a
    check_sizes(world_size, ep_size, dp_size, moe_a2a)
    if device is None:
        if torch.cuda.is_available():
            device = f"cuda:{rank % torch.cuda.device_count()}"
        else:
            device = "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world_size == 1:
        return ParallelContext(device=dev, moe_a2a=moe_a2a, num_redundant_experts=num_redundant_experts)
    if not dist.is_initialized():
        os.environ["MASTER_ADDR"] = master_addr
        os.environ["MASTER_PORT"] = str(master_port)
        dist.init_process_group(
            backend=backend or default_backend(dev),
            rank=rank,
            world_size=world_size,
            timeout=datetime.timedelta(seconds=timeout_s),
        )
    tp = world_size // dp_size
    if dp_size == 1:
        tp_group = dist.group.WORLD
    else:
        groups = [dist.new_group(list(range(g * tp, (g + 1) * tp))) if tp > 1 else None for g in range(dp_size)]
        tp_group = groups[rank // tp]
    return ParallelContext(rank=rank, world_size=world_size, ep_size=ep_size, device=dev, tp_group=tp_group,
                           dp_size=dp_size, moe_a2a=moe_a2a, ep_group=dist.group.WORLD if moe_a2a else None,
                           num_redundant_experts=num_redundant_experts)  # fmt: skip


def destroy_parallel() -> None:
    """Tear down the default process group if this process created one."""
    if dist.is_initialized():
        dist.destroy_process_group()
