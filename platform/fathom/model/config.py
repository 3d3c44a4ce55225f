"""DeepSeek-V2 / V2-Lite / V3 / R1 architecture, parsed from a Hugging Face ``config.json``.

Accepts both the published checkpoints' spelling (``rope_scaling`` + ``rope_theta``, ``torch_dtype``)
and the one transformers 5 writes (``rope_parameters``, ``dtype``). Generic Hugging Face fields
that do not change the architecture are accepted and ignored; any other field is an error that
names it, and so is an inconsistent combination.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

# Fields that carry no architecture (or are handled elsewhere) and are accepted as-is.
IGNORED_FIELDS = frozenset(
    {
        "architectures", "auto_map", "transformers_version", "_name_or_path", "torch_dtype", "dtype",
        "initializer_range", "use_cache", "pad_token_id", "pretraining_tp", "attention_dropout",
        "output_router_logits", "aux_loss_alpha", "seq_aux", "ep_size", "router_aux_loss_coef",
        "head_dim", "return_dict", "output_hidden_states", "output_attentions", "tokenizer_class",
        "id2label", "label2id", "is_encoder_decoder", "tie_encoder_decoder", "chunk_size_feed_forward",
        "use_return_dict", "problem_type", "num_labels", "max_window_layers", "sliding_window",
        "use_sliding_window", "mlp_only_layers", "generation_config", "num_mtp_layers",
    }
)  # fmt: skip


class RopeConfig(BaseModel):
    """Rotary embedding of the ``qk_rope_head_dim`` part, optionally YaRN-scaled."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rope_type: Literal["default", "yarn"] = Field("default", description="default or yarn")
    rope_theta: float = Field(10000.0, description="RoPE base")
    factor: float = Field(1.0, description="YaRN context extension factor")
    original_max_position_embeddings: int | None = Field(None, description="pretraining context (YaRN)")
    beta_fast: float = Field(32.0, description="YaRN ramp: extrapolate above this many rotations")
    beta_slow: float = Field(1.0, description="YaRN ramp: interpolate below this many rotations")
    mscale: float | None = Field(None, description="YaRN mscale (cos/sin magnitude numerator)")
    mscale_all_dim: float | None = Field(None, description="YaRN mscale_all_dim (softmax-scale correction)")
    attention_factor: float | None = Field(None, description="explicit cos/sin magnitude (overrides mscale)")
    truncate: bool = Field(True, description="round the YaRN correction range to whole dims")


class DeepseekConfig(BaseModel):
    """The architecture of one DeepSeek-V2/V3-family checkpoint (see module doc)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_type: Literal["deepseek_v2", "deepseek_v3"] = Field(description="checkpoint family")
    vocab_size: int = Field(gt=0, description="vocabulary size")
    hidden_size: int = Field(gt=0, description="residual stream width")
    intermediate_size: int = Field(gt=0, description="dense MLP width")
    moe_intermediate_size: int = Field(0, ge=0, description="routed/shared expert width")
    num_hidden_layers: int = Field(gt=0, description="decoder layers (MTP layers not counted)")
    num_attention_heads: int = Field(gt=0, description="attention heads")
    num_key_value_heads: int | None = Field(None, description="must equal num_attention_heads for MLA")
    q_lora_rank: int | None = Field(None, description="query latent rank; null = full q_proj (V2-Lite)")
    kv_lora_rank: int = Field(gt=0, description="rank of the cached KV latent c_KV")
    qk_nope_head_dim: int = Field(gt=0, description="per-head query/key dims without rope")
    qk_rope_head_dim: int = Field(gt=0, description="per-head query/key rope dims (shared k_pe)")
    v_head_dim: int = Field(gt=0, description="per-head value dims")
    qk_head_dim: int | None = Field(None, description="nope + rope; checked when given")
    first_k_dense_replace: int = Field(0, ge=0, description="leading layers with a dense MLP")
    moe_layer_freq: int = Field(1, ge=1, description="every k-th layer after those is MoE")
    n_routed_experts: int | None = Field(None, description="routed experts per MoE layer")
    n_shared_experts: int | None = Field(None, description="shared experts per MoE layer")
    num_experts_per_tok: int | None = Field(None, description="experts chosen per token (top-k)")
    n_group: int | None = Field(None, description="expert groups for group-limited routing")
    topk_group: int | None = Field(None, description="groups a token may route to")
    topk_method: Literal["greedy", "group_limited_greedy", "noaux_tc"] | None = Field(
        None, description="routing; default greedy for V2, noaux_tc for V3"
    )
    scoring_func: Literal["softmax", "sigmoid"] | None = Field(
        None, description="gate scores; default softmax for V2, sigmoid for V3"
    )
    norm_topk_prob: bool = Field(False, description="renormalise the top-k weights")
    routed_scaling_factor: float = Field(1.0, description="multiplier on routed expert weights")
    rms_norm_eps: float = Field(1e-6, description="RMSNorm epsilon")
    hidden_act: Literal["silu"] = Field("silu", description="MLP activation")
    max_position_embeddings: int = Field(4096, gt=0, description="longest supported context")
    rope_theta: float | None = Field(None, description="RoPE base (published spelling)")
    rope_scaling: dict[str, Any] | None = Field(None, description="RoPE scaling (published spelling)")
    rope_parameters: dict[str, Any] | None = Field(None, description="RoPE (transformers 5 spelling)")
    rope_interleave: bool = Field(True, description="rope dims are interleaved pairs (DeepSeek layout)")
    tie_word_embeddings: bool = Field(False, description="LM head shares the embedding matrix")
    attention_bias: bool = Field(False, description="only false is supported")
    mlp_bias: bool = Field(False, description="only false is supported")
    num_nextn_predict_layers: int = Field(0, ge=0, description="MTP layers (the first is loaded for MTP speculative decoding)")
    bos_token_id: int | None = Field(None, description="begin-of-sequence token")
    eos_token_id: int | list[int] | None = Field(None, description="end-of-sequence token(s)")
    quantization_config: dict[str, Any] | None = Field(None, description="fp8 block quantisation")

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DeepseekConfig:
        """Validate a config.json dict; raises ValueError naming unknown or inconsistent fields."""
        if not isinstance(d, dict):
            raise ValueError(f"config must be a JSON object, got {type(d).__name__}")  # noqa: TRY004
        unknown = sorted(k for k in d if k not in cls.model_fields and k not in IGNORED_FIELDS)
        if unknown:
            raise ValueError(f"config.json: unknown field(s) {', '.join(map(repr, unknown))}")
        fields = {k: v for k, v in d.items() if k in cls.model_fields}
        try:
            return cls.model_validate(fields)
        except ValidationError as e:
            msgs = "; ".join(
                f"{'.'.join(map(str, err['loc'])) or 'config'}: {err['msg']}" for err in e.errors()
            )
            raise ValueError(f"config.json: {msgs}") from None

    @classmethod
    def from_pretrained(cls, path: str | Path) -> DeepseekConfig:
        """Read ``<dir>/config.json`` (or the file itself)."""
        p = Path(path)
        file = p / "config.json" if p.is_dir() else p
        if not file.is_file():
            raise FileNotFoundError(f"no config.json in {path}")
        try:
            d = json.loads(file.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{file}: not valid JSON ({e})") from None
        return cls.from_dict(d)

    # ---- consistency --------------------------------------------------------------------
    @model_validator(mode="after")
    def _check(self) -> DeepseekConfig:
        def bad(field: str, why: str) -> ValueError:
            return ValueError(f"{field}: {why}")

        if self.num_key_value_heads not in (None, self.num_attention_heads):
            raise bad("num_key_value_heads", "MLA needs num_key_value_heads == num_attention_heads")
        if self.qk_head_dim not in (None, self.qk_nope_head_dim + self.qk_rope_head_dim):
            raise bad("qk_head_dim", "must equal qk_nope_head_dim + qk_rope_head_dim")
        if self.qk_rope_head_dim % 2:
            raise bad("qk_rope_head_dim", "must be even")
        if self.attention_bias or self.mlp_bias:
            raise bad("attention_bias" if self.attention_bias else "mlp_bias", "biases are not supported")
        if self.q_lora_rank is not None and self.q_lora_rank <= 0:
            raise bad("q_lora_rank", "must be positive or null")
        self._check_moe()
        self.rope  # noqa: B018  (validates the rope fields)
        if self.quantization_config is not None:
            self._check_quant()
        return self

    def _check_moe(self) -> None:
        if not self.n_routed_experts:
            return
        k, e, g, tg = self.num_experts_per_tok, self.n_routed_experts, self.num_groups, self.topk_groups
        if k is None or not 0 < k <= e:
            raise ValueError(f"num_experts_per_tok: must be in 1..n_routed_experts={e}, got {k}")
        if self.moe_intermediate_size <= 0:
            raise ValueError("moe_intermediate_size: must be > 0 when n_routed_experts is set")
        if e % g:
            raise ValueError(f"n_group: n_routed_experts={e} is not divisible by n_group={g}")
        if not 0 < tg <= g:
            raise ValueError(f"topk_group: must be in 1..n_group={g}, got {tg}")
        if self.routing_method == "noaux_tc" and e // g < 2:
            raise ValueError("n_group: noaux_tc scores groups by their top-2 experts; groups need >= 2")
        if tg * (e // g) < k:
            raise ValueError(f"topk_group: {tg} groups of {e // g} experts cannot supply top-{k}")

    def _check_quant(self) -> None:
        q = self.quantization_config or {}
        if q.get("quant_method") != "fp8":
            raise ValueError(
                f"quantization_config.quant_method: only 'fp8' is supported, got {q.get('quant_method')!r}"
            )
        if list(q.get("weight_block_size", [128, 128])) != [128, 128]:
            raise ValueError("quantization_config.weight_block_size: only [128, 128] is supported")

    # ---- derived ------------------------------------------------------------------------
    @property
    def qk_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def num_groups(self) -> int:
        return self.n_group or 1

    @property
    def topk_groups(self) -> int:
        return self.topk_group or self.num_groups

    @property
    def routing_method(self) -> str:
        return self.topk_method or ("noaux_tc" if self.model_type == "deepseek_v3" else "greedy")

    @property
    def gate_scoring(self) -> str:
        return self.scoring_func or ("sigmoid" if self.model_type == "deepseek_v3" else "softmax")

    @property
    def fp8(self) -> bool:
        return self.quantization_config is not None

    def is_moe_layer(self, i: int) -> bool:
        """Layer ``i`` has routed + shared experts (else a dense MLP)."""
        return (
            bool(self.n_routed_experts) and i >= self.first_k_dense_replace and i % self.moe_layer_freq == 0
        )

    @property
    def rope(self) -> RopeConfig:
        """RoPE settings merged from rope_parameters / rope_scaling / rope_theta."""
        d = dict(self.rope_scaling or {})
        d.update(self.rope_parameters or {})
        if "type" in d:
            d.setdefault("rope_type", d.pop("type"))
        if self.rope_theta is not None:
            d.setdefault("rope_theta", self.rope_theta)
        if d.get("rope_type") == "yarn":
            d.setdefault("original_max_position_embeddings", self.max_position_embeddings)
        field = "rope_parameters" if self.rope_parameters else "rope_scaling"
        try:
            return RopeConfig.model_validate(d)
        except ValidationError as e:
            err = e.errors()[0]
            raise ValueError(f"{field}.{'.'.join(map(str, err['loc']))}: {err['msg']}") from None
