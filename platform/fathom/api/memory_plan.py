"""The memory planner's core, torch-free: what one rank of a DeepSeek-V2/V3 instance holds, and
whether the instance fits its GPUs (shared by `fathom plan` and the Kubernetes operator).

Per rank: weight bytes by kind (``KINDS``) exactly as the loader allocates them (a test builds the
model on the meta device and loads checkpoints to prove it), KV bytes per token, how many tokens
of KV fit in the KV fraction of what the weights leave of the GPU, and whether the instance fits.

The weights' formats are the loader's decisions (``fp8_resident``): FP8-resident projections are
1 byte per element plus float32 scales over the rank's local block grid (128 along a dim held
whole, gcd(128, local size) along a split or stacked one: ``fathom.model.weights.fp8``); all other
tensors are in the compute dtype, except the router's correction bias (float32).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from pydantic import Field

from fathom.api.base import Spec

Quantization = Literal["auto", "fp8", "none"]
KvCacheDType = Literal["auto", "fp8"]
KINDS = ("attention", "dense_mlp", "routed_experts", "shared_experts", "embeddings_head", "router", "norms",
         "scales")  # fmt: skip
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
BLOCK = 128
GIB = 1 << 30
MIB = 1 << 20


def fp8_resident(checkpoint_fp8: bool, quantization: str) -> bool:
    """Whether the projections are held FP8: 'auto' iff the checkpoint is FP8 (its config.json has a
    quantization_config), 'fp8' always (a bf16/fp32 checkpoint is quantised at load), 'none' never
    (an FP8 checkpoint is dequantised to the compute dtype at load)."""
    if quantization not in ("auto", "fp8", "none"):
        raise ValueError(f"quantization must be 'auto', 'fp8' or 'none', got {quantization!r}")
    return quantization == "fp8" or (quantization == "auto" and checkpoint_fp8)


@dataclass(frozen=True)
class GpuSpec:
    name: str
    memory_bytes: int  # total memory as the driver reports it (nvidia-smi, torch.cuda.mem_get_info)
    fp8_gemm: bool  # Fathom's block-scaled FP8 kernel runs here (torch's DeepSeek recipe: SM90 only)


GPUS = {
    "h100": GpuSpec("H100 80GB", 81559 * MIB, True),
    "h200": GpuSpec("H200 141GB", 143771 * MIB, True),
    "h20": GpuSpec("H20 96GB", 97871 * MIB, True),
    "a100": GpuSpec("A100 80GB", 81920 * MIB, False),
    "b200": GpuSpec("B200 192GB", 183359 * MIB, False),
}


_UNITS = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


def quantity_bytes(quantity: int | str) -> int:
    """A Kubernetes memory quantity ("141Gi", "150G", 1024) in bytes."""
    text = str(quantity).strip()
    for suffix, factor in _UNITS.items():
        if text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * factor)
    return int(float(text))


def gpu_spec(name: str, memory_gib: float | None = None) -> GpuSpec:
    """A GPU of the table (case-insensitive), its memory optionally overridden; an unknown name
    needs ``memory_gib``."""
    spec = GPUS.get(name.lower())
    if spec is None and memory_gib is None:
        raise ValueError(f"unknown GPU {name!r}: one of {', '.join(GPUS)}, or give its memory")
    if memory_gib is None:
        return spec
    return GpuSpec(spec.name if spec else name, int(memory_gib * GIB), spec.fp8_gemm if spec else False)


class ModelShape(Spec):
    """The numbers of a DeepSeek-V2/V3/R1 checkpoint that decide its memory, named as in its
    config.json (camelCase in a ModelService)."""

    model_type: Literal["deepseek_v2", "deepseek_v3"] = Field("deepseek_v3", description="Checkpoint family.")
    vocab_size: int = Field(..., gt=0, description="Vocabulary size.")
    hidden_size: int = Field(..., gt=0, description="Residual stream width.")
    intermediate_size: int = Field(..., gt=0, description="Dense MLP width.")
    moe_intermediate_size: int = Field(0, ge=0, description="Routed and shared expert width.")
    num_hidden_layers: int = Field(..., gt=0, description="Decoder layers (MTP layers not counted).")
    num_attention_heads: int = Field(..., gt=0, description="Attention heads.")
    q_lora_rank: int | None = Field(None, description="Query latent rank; unset = full q_proj.")
    kv_lora_rank: int = Field(..., gt=0, description="Rank of the cached KV latent.")
    qk_nope_head_dim: int = Field(..., gt=0, description="Per-head query/key dims without rope.")
    qk_rope_head_dim: int = Field(..., gt=0, description="Per-head rope dims (one shared rope key per token).")
    v_head_dim: int = Field(..., gt=0, description="Per-head value dims.")
    first_k_dense_replace: int = Field(0, ge=0, description="Leading layers with a dense MLP.")
    moe_layer_freq: int = Field(1, ge=1, description="Every k-th layer after those is MoE.")
    n_routed_experts: int | None = Field(None, description="Routed experts per MoE layer.")
    n_shared_experts: int | None = Field(None, description="Shared experts per MoE layer.")
    topk_method: Literal["greedy", "group_limited_greedy", "noaux_tc"] | None = Field(None, description="Routing; noaux_tc adds a float32 correction bias per expert. Default: noaux_tc for V3, greedy for V2.")
    tie_word_embeddings: bool = Field(False, description="LM head shares the embedding matrix (still held twice).")
    max_position_embeddings: int = Field(4096, gt=0, description="Longest supported context.")
    fp8: bool = Field(False, description="The checkpoint's projections are FP8 with 128x128 block scales (config.json quantization_config).")

    @classmethod
    def from_config(cls, config: dict) -> ModelShape:
        """The shape of a config.json dict (other keys ignored)."""
        fields = {k: v for k, v in config.items() if k in cls.model_fields and k != "fp8"}
        quant = config.get("quantization_config") or {}
        return cls.model_validate({**fields, "fp8": quant.get("quant_method") == "fp8"})

    def is_moe_layer(self, i: int) -> bool:
        return bool(self.n_routed_experts) and i >= self.first_k_dense_replace and i % self.moe_layer_freq == 0

    @property
    def gate_bias(self) -> bool:
        method = self.topk_method or ("noaux_tc" if self.model_type == "deepseek_v3" else "greedy")
        return method == "noaux_tc"


def kind_of(name: str) -> str:
    """The kind (``KINDS``) of one of our parameter or buffer names."""
    leaf = name.rsplit(".", 2)[-2] if name.endswith(".weight") else name.rsplit(".", 1)[-1]
    if name.endswith("_scale_inv"):
        return "scales"
    if name.startswith(("model.embed_tokens.", "lm_head.")):
        return "embeddings_head"
    if leaf.endswith("norm"):
        return "norms"
    for part, kind in ((".self_attn.", "attention"), (".mlp.experts.", "routed_experts"),
                       (".mlp.shared_experts.", "shared_experts"), (".mlp.gate.", "router"), (".mlp.", "dense_mlp")):  # fmt: skip
        if part in name:
            return kind
    raise ValueError(f"no kind for tensor {name!r}")


def _split(total: int, parts: int, what: str) -> int:
    if total % parts:
        raise ValueError(f"{what}={total} is not divisible by {parts} ranks")
    return total // parts


def vocab_rows(vocab_size: int, rank: int, world_size: int) -> int:
    """Vocab rows a rank holds (ceil(V / W) each, the last ranks fewer): as ``layers.vocab``."""
    per = -(-vocab_size // world_size)
    start = min(rank * per, vocab_size)
    return min(start + per, vocab_size) - start


class _Bytes:
    """Accumulates one rank's tensors by kind."""

    def __init__(self, dtype_bytes: int, fp8: bool) -> None:
        self.dt, self.fp8, self.kinds = dtype_bytes, fp8, dict.fromkeys(KINDS, 0)

    def dense(self, kind: str, *shape: int, itemsize: int | None = None) -> None:
        self.kinds[kind] += math.prod(shape) * (itemsize or self.dt)

    def proj(self, kind: str, rows: int, cols: int, br: int = BLOCK, bc: int = BLOCK, stack: int = 1) -> None:
        """A projection [rows, cols] (``stack`` of them): FP8 with float32 scales over its local
        (br × bc) block grid, or dense."""
        if not self.fp8:
            return self.dense(kind, stack, rows, cols)
        self.kinds[kind] += stack * rows * cols
        self.kinds["scales"] += stack * -(-rows // br) * -(-cols // bc) * 4
        return None


def local_block(size: int, split: bool) -> int:
    """A rank's scale block along a dim (as ``fathom.model.weights.fp8.local_block``)."""
    return math.gcd(BLOCK, size) if split else BLOCK


def weight_bytes(shape: ModelShape, tp: int = 1, ep: int = 1, rank: int = 0, dtype: str = "bfloat16",
                 fp8: bool = False, dp: int = 1, redundant: int = 0) -> dict[str, int]:  # fmt: skip
    """Bytes of rank ``rank``'s tensors by kind, for ``dp`` attention groups of TP ``tp`` (W = dp x tp
    ranks), EP ``ep`` over W with ``redundant`` extra expert slots, non-FP8 tensors in ``dtype``,
    projections FP8-resident when ``fp8``."""
    s, W = shape, tp
    if ep < 1 or (W * dp) % ep:
        raise ValueError(f"expert_parallel_size={ep} must divide the world size {W * dp}")
    b = _Bytes(DTYPE_BYTES[dtype], fp8)
    H, heads = s.hidden_size, _split(s.num_attention_heads, W, "num_attention_heads")
    rows = vocab_rows(s.vocab_size, rank % W, W)
    b.dense("embeddings_head", 2, rows, H)
    b.dense("norms", H)
    for i in range(s.num_hidden_layers):
        b.dense("norms", 2, H)
        _attention(b, s, heads, W > 1)
        if s.is_moe_layer(i):
            _moe(b, s, W, ep, W * dp, redundant)
        else:
            inter = _split(s.intermediate_size, W, "intermediate_size")
            b.proj("dense_mlp", inter, H, br=local_block(inter, W > 1), stack=2)
            b.proj("dense_mlp", H, inter, bc=local_block(inter, W > 1))
    return b.kinds


def _attention(b: _Bytes, s: ModelShape, heads: int, split: bool) -> None:
    H, q_out = s.hidden_size, heads * (s.qk_nope_head_dim + s.qk_rope_head_dim)
    if s.q_lora_rank is None:
        b.proj("attention", q_out, H, br=local_block(q_out, split))
    else:
        b.proj("attention", s.q_lora_rank, H)
        b.dense("norms", s.q_lora_rank)
        b.proj("attention", q_out, s.q_lora_rank, br=local_block(q_out, split))
    b.proj("attention", s.kv_lora_rank + s.qk_rope_head_dim, H)
    b.dense("norms", s.kv_lora_rank)
    kv_out, o_in = heads * (s.qk_nope_head_dim + s.v_head_dim), heads * s.v_head_dim
    b.proj("attention", kv_out, s.kv_lora_rank, br=local_block(kv_out, split))
    b.proj("attention", H, o_in, bc=local_block(o_in, split))


def _moe(b: _Bytes, s: ModelShape, W: int, ep: int, world: int, redundant: int) -> None:
    """Router, routed experts ((E + redundant) / ep slots, each split over world / ep ranks) and the
    shared experts (split over the W = TP ranks of an attention group)."""
    H, E = s.hidden_size, s.n_routed_experts or 0
    if (E + redundant) % ep:
        raise ValueError(f"n_routed_experts={E} + num_redundant_experts={redundant} is not divisible by ep_size={ep}")
    b.dense("router", E, H)
    if s.gate_bias:
        b.dense("router", E, itemsize=4)
    moe_tp, slots = world // ep, (E + redundant) // ep
    inter = _split(s.moe_intermediate_size, moe_tp, "moe_intermediate_size")
    # w13 stacks each expert's gate and up slices: its row blocks never straddle them
    b.proj("routed_experts", 2 * inter, H, br=local_block(inter, True), stack=slots)
    b.proj("routed_experts", H, inter, bc=local_block(inter, moe_tp > 1), stack=slots)
    if s.n_shared_experts:
        shared = _split(s.moe_intermediate_size * s.n_shared_experts, W, "moe_intermediate_size * n_shared_experts")
        b.proj("shared_experts", shared, H, br=local_block(shared, W > 1), stack=2)
        b.proj("shared_experts", H, shared, bc=local_block(shared, W > 1))


def kv_bytes_per_token(shape: ModelShape, kv_itemsize: int) -> int:
    """Latent-cache bytes one token takes on every rank: layers × (kv_lora_rank + rope dims) × itemsize."""
    return shape.num_hidden_layers * (shape.kv_lora_rank + shape.qk_rope_head_dim) * kv_itemsize


def kv_itemsize(kv_cache_dtype: str, dtype: str) -> int:
    return 1 if kv_cache_dtype in ("fp8", "fp8_e4m3") else DTYPE_BYTES[dtype]


@dataclass(frozen=True)
class RankPlan:
    rank: int
    weights: dict[str, int]
    kv_budget: int  # bytes of KV cache this rank can hold
    kv_tokens: int  # tokens of KV that budget holds (whole blocks)

    @property
    def weight_bytes(self) -> int:
        return sum(self.weights.values())


@dataclass(frozen=True)
class MemoryPlan:
    """The plan of one model instance on its GPUs (every rank on one GPU)."""

    gpu: GpuSpec
    num_gpus: int
    tp: int
    ep: int
    dtype: str
    fp8_weights: bool
    kv_cache_dtype: str
    kv_bytes_per_token: int
    max_model_len: int
    memory_fraction: float
    reserved_bytes: int
    ranks: list[RankPlan] = field(default_factory=list)
    dp: int = 1  # attention groups: W = dp x tp ranks

    @property
    def kv_tokens(self) -> int:
        """Tokens of KV one attention group holds: its smallest rank's (its ranks cache every token
        of the group; with dp > 1 each group caches its own requests)."""
        return min(r.kv_tokens for r in self.ranks)

    @property
    def world_size(self) -> int:
        return self.tp * self.dp

    @property
    def replicas(self) -> int:
        return self.num_gpus // self.world_size

    @property
    def fits(self) -> bool:
        return not self.problems

    @property
    def problems(self) -> list[str]:
        """Why the instance does not fit (empty when it does)."""
        out = []
        if self.world_size > self.num_gpus:
            what = f"tensor_parallel_size {self.tp}" + (f" x data_parallel_size {self.dp}" if self.dp > 1 else "")
            out.append(f"{what} needs {self.world_size} GPUs, {self.num_gpus} given")
        worst = max(self.ranks, key=lambda r: r.weight_bytes)
        if worst.weight_bytes + self.reserved_bytes > self.gpu.memory_bytes:
            out.append(f"rank {worst.rank} needs {worst.weight_bytes / GIB:.1f} GiB of weights + "
                       f"{self.reserved_bytes / GIB:.1f} GiB reserved, the {self.gpu.name} has "
                       f"{self.gpu.memory_bytes / GIB:.1f} GiB")  # fmt: skip
        elif self.kv_tokens < self.max_model_len:
            out.append(f"KV cache holds {self.kv_tokens} tokens, fewer than max_model_len {self.max_model_len}")
        elif worst.weight_bytes + self.reserved_bytes + worst.kv_budget > self.gpu.memory_bytes:
            out.append(f"rank {worst.rank}: {worst.weight_bytes / GIB:.1f} GiB of weights + "
                       f"{self.reserved_bytes / GIB:.1f} GiB reserved + kv_cache_memory "
                       f"{worst.kv_budget / GIB:.1f} GiB exceed the {self.gpu.name}'s {self.gpu.memory_bytes / GIB:.1f} GiB")  # fmt: skip
        return out

    def to_dict(self) -> dict:
        return {
            "gpu": {"name": self.gpu.name, "memory_bytes": self.gpu.memory_bytes, "count": self.num_gpus},
            "tensor_parallel_size": self.tp, "data_parallel_size": self.dp, "expert_parallel_size": self.ep,
            "replicas": self.replicas,
            "dtype": self.dtype, "fp8_weights": self.fp8_weights, "kv_cache_dtype": self.kv_cache_dtype,
            "kv_bytes_per_token": self.kv_bytes_per_token, "kv_tokens": self.kv_tokens,
            "max_model_len": self.max_model_len, "kv_cache_memory_fraction": self.memory_fraction,
            "reserved_bytes": self.reserved_bytes, "fits": self.fits, "problems": self.problems,
            "ranks": [{"rank": r.rank, "weight_bytes": r.weight_bytes, "weights": r.weights,
                       "kv_budget_bytes": r.kv_budget, "kv_tokens": r.kv_tokens} for r in self.ranks],
        }  # fmt: skip


RESERVED_BYTES = 2 * GIB  # per GPU: CUDA context, NCCL buffers, one step's activations (an allowance)


def plan_memory(shape: ModelShape, gpu: GpuSpec, *, num_gpus: int, tp: int, ep: int = 1,
                dtype: str = "bfloat16", quantization: str = "auto", kv_cache_dtype: str = "auto",
                max_model_len: int | None = None, memory_fraction: float = 0.9, block_size: int = 16,
                reserved_bytes: int = RESERVED_BYTES, kv_cache_memory: int | None = None,
                weights: list[dict[str, int]] | None = None, dp: int = 1, redundant: int = 0) -> MemoryPlan:  # fmt: skip
    """The plan of one instance of TP ``tp`` / EP ``ep``. The KV budget of a rank is, as the engine
    sizes it, ``kv_cache_memory`` bytes when given, else ``memory_fraction`` of what its weights
    (and ``reserved_bytes``) leave of the GPU, in whole blocks of ``block_size`` tokens.
    ``weights`` (per rank, by kind) replaces the arithmetic with measured numbers (``fathom plan``
    passes the meta-device build's)."""
    fp8 = fp8_resident(shape.fp8, quantization)
    per_token = kv_bytes_per_token(shape, kv_itemsize(kv_cache_dtype, dtype))
    ranks = []
    for r in range(tp * dp):
        w = weights[r] if weights is not None else weight_bytes(shape, tp, ep, r, dtype, fp8, dp, redundant)
        free = gpu.memory_bytes - reserved_bytes - sum(w.values())
        budget = max(0, int(free * memory_fraction)) if kv_cache_memory is None else kv_cache_memory
        ranks.append(RankPlan(r, w, budget, budget // (per_token * block_size) * block_size))
    return MemoryPlan(gpu, num_gpus, tp, ep, dtype, fp8, kv_cache_dtype, per_token,
                      max_model_len or shape.max_position_embeddings, memory_fraction, reserved_bytes, ranks, dp)  # fmt: skip
