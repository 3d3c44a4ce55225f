"""Engine and model settings: the one vocabulary behind `fathom serve` flags, `--config FILE`,
the Serve app config and the `ModelService` spec (`spec.engine`)."""

from typing import Literal

from pydantic import Field, model_validator

from fathom.api.base import Spec
from fathom.api.memory_plan import KvCacheDType, Quantization

DType = Literal["auto", "float32", "bfloat16", "float16"]


class Pricing(Spec):
    """Prices in the operator's currency per million tokens; usage times price gives cost."""

    prompt_per_million: float = Field(0.0, ge=0, description="Price per million uncached prompt tokens.")
    cached_prompt_per_million: float = Field(0.0, ge=0, description="Price per million prompt tokens served from the prefix cache.")
    completion_per_million: float = Field(0.0, ge=0, description="Price per million completion tokens.")


class EplbSettings(Spec):
    """Expert-parallel load balancing (vLLM's `eplb_config` names): redundant replicas of hot experts,
    placed from the routed-token counts and applied between steps (docs/sharding.md)."""

    num_redundant_experts: int = Field(0, ge=0, le=4096, description="Extra physical expert slots for replicas of hot experts.")
    step_interval: int = Field(0, ge=0, description="Engine steps between rebalances (0: never).")


class SpeculativeConfig(Spec):
    """Speculative decoding, spelled as vLLM's `--speculative-config` JSON (docs/speculative_decoding.md)."""

    method: Literal["mtp"] = Field(description="Draft model: mtp = the checkpoint's multi-token-prediction module (DeepSeek-V3/R1, num_nextn_predict_layers >= 1).")
    num_speculative_tokens: int = Field(1, ge=1, le=3, description="Drafts per decoding sequence and step (k); k > 1 applies the MTP module recurrently.")


class EngineSettings(Spec):
    """How one model instance runs: sharding, batching and KV-cache limits."""

    model: str | None = Field(None, description="Checkpoint directory (Hugging Face layout: config.json, *.safetensors, tokenizer files); `fathom serve` also takes a Hugging Face hub id (org/name). Unset: the built-in demo model.")
    served_model_name: str | None = Field(None, description="Model id in /v1/models; default: the hub id, else the directory name, else `fathom-demo`.")
    tensor_parallel_size: int = Field(1, ge=1, le=1024, description="Ranks TP that split heads, dense MLPs and vocab (W = D x TP).")
    expert_parallel_size: int = Field(1, ge=1, le=1024, description="Expert shards of the routed experts; divides W (D > 1: W).")
    data_parallel_size: int = Field(1, ge=1, le=1024, description="Attention groups D (DP attention; W = D x TP ranks).")
    eplb: EplbSettings = Field(default_factory=EplbSettings, description="Expert-parallel load balancing (W > 1).")
    dtype: DType = Field("auto", description="Weights and activations dtype; auto = bfloat16 on CUDA, float32 on CPU.")
    quantization: Quantization = Field("auto", description="Weights: auto = as stored (FP8 stays FP8); fp8 = quantise at load; none = dequantise.")
    max_model_len: int | None = Field(None, ge=1, description="Longest prompt + completion, in tokens; default: the checkpoint's max_position_embeddings.")
    max_num_seqs: int = Field(64, ge=1, description="Most sequences in one engine step.")
    max_num_batched_tokens: int = Field(2048, ge=16, description="Tokens in one engine step (prefill chunks + decodes).")
    block_size: int = Field(16, ge=1, le=1024, description="Tokens per KV-cache block.")
    kv_cache_memory: int | None = Field(None, ge=1, description="Bytes of latent KV cache per rank; default: sized from free memory.")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="GPUs: fraction of each GPU's memory one model instance may use (weights, activations, KV cache; as in vLLM). Ignored with kv_cache_memory.")
    kv_cache_memory_fraction: float = Field(0.9, gt=0, le=1, description="CPU: share of free memory for the KV cache.")
    kv_cache_dtype: KvCacheDType = Field("auto", description="Latent KV cache: auto = the model dtype; fp8 = e4m3 (half the bytes).")
    enable_prefix_caching: bool = Field(True, description="Reuse cached KV blocks of shared prompt prefixes.")
    enable_chunked_prefill: bool = Field(True, description="Split long prompts over steps so decodes are not stalled.")
    reasoning_parser: Literal["auto", "none", "deepseek_r1"] = Field("auto", description="auto: deepseek_r1 for the built-in demo model, else none.")
    tool_call_parser: Literal["auto", "none", "deepseek_v3", "deepseek_v31"] = Field("auto", description="Tool-call format; auto: from the chat template.")
    engine_core_process: bool = Field(True, description="W=1: engine core in a child process; off: in a thread.")
    seed: int = Field(0, description="Seed of unseeded sampling.")
    speculative_config: SpeculativeConfig | None = Field(None, description="Speculative decoding (vLLM's spelling), e.g. {\"method\": \"mtp\", \"num_speculative_tokens\": 1}; unset: off.")
    pricing: Pricing = Field(default_factory=Pricing, description="Prices per million tokens for metering.")

    @property
    def world_size(self) -> int:
        """Ranks W of one instance: data_parallel_size x tensor_parallel_size."""
        return self.data_parallel_size * self.tensor_parallel_size

    @property
    def moe_ep_size(self) -> int:
        """Expert shards: all W ranks with data-parallel attention, else expert_parallel_size."""
        return self.world_size if self.data_parallel_size > 1 else self.expert_parallel_size

    @model_validator(mode="after")
    def _ep_divides_tp(self) -> "EngineSettings":
        if self.world_size == 1 and (self.eplb.num_redundant_experts or self.eplb.step_interval):
            raise ValueError("eplb balances experts over ranks: it needs tensor_parallel_size x data_parallel_size > 1")
        if self.speculative_config and (self.data_parallel_size > 1 or self.eplb.num_redundant_experts):
            raise ValueError("speculative_config (MTP) does not run with data_parallel_size > 1 or "
                             "eplb.num_redundant_experts yet (docs/speculative_decoding.md)")
        if self.data_parallel_size > 1:
            if self.expert_parallel_size not in (1, self.world_size):
                raise ValueError(f"with data_parallel_size > 1 the experts are split over all {self.world_size} "
                                 f"ranks: expert_parallel_size must be 1 (default) or {self.world_size}")
            return self
        if self.tensor_parallel_size % self.expert_parallel_size:
            raise ValueError(
                f"expert_parallel_size ({self.expert_parallel_size}) must divide "
                f"tensor_parallel_size ({self.tensor_parallel_size})"
            )
        return self

    @property
    def num_speculative_tokens(self) -> int:
        """k, the drafts per decoding sequence and step; 0 when speculative decoding is off."""
        return self.speculative_config.num_speculative_tokens if self.speculative_config else 0
