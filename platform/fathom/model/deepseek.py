"""DeepSeek-V2/V3/R1 decoder: embeddings, L × (MLA + dense MLP or DeepSeekMoE), final norm, LM head.

Parameter names mirror the Hugging Face checkpoints (``model.layers.3.self_attn.kv_b_proj.weight``)
except that a MoE layer's routed experts on a rank are two stacked parameters, ``mlp.experts.w13``
and ``mlp.experts.w2``; which slice of each checkpoint tensor a rank holds, and where it goes, is
declared in ``fathom.model.weights.sharding``.
"""

from __future__ import annotations

import torch
from torch import nn

from fathom.model.attention_metadata import AttentionMetadata
from fathom.model.config import DeepseekConfig
from fathom.model.layers.attention import MODES
from fathom.model.layers.decoder import DecoderLayer
from fathom.model.layers.fp8_gemm import share_scratch
from fathom.model.layers.moe import MoE
from fathom.model.layers.norm import RMSNorm
from fathom.model.layers.rotary import Rotary
from fathom.model.layers.vocab import ParallelLMHead, VocabParallelEmbedding
from fathom.model.mtp import MTPLayer
from fathom.parallel.context import ParallelContext


class DeepseekModel(nn.Module):
    """``layers``: the L decoder layers, then the MTP module (``fathom.model.mtp``) when built with one."""

    def __init__(self, config: DeepseekConfig, ctx: ParallelContext, dtype: torch.dtype, fp8: bool = False,
                 mtp: str | None = None) -> None:  # fmt: skip
        super().__init__()
        c = config
        self.embed_tokens = VocabParallelEmbedding(c.vocab_size, c.hidden_size, ctx, dtype)
        layers: list[nn.Module] = [DecoderLayer(c, ctx, i, dtype, fp8) for i in range(c.num_hidden_layers)]
        if mtp is not None:
            layers.append(MTPLayer(c, ctx, dtype, fp8, own_embedding=mtp == "own_embedding"))
        self.layers = nn.ModuleList(layers)
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps).to(ctx.device, dtype)


class DeepseekForCausalLM(nn.Module):
    """One rank's shard of the model. Construct empty, then fill with ``fathom.model.loader``.

    ``dtype`` is the compute dtype and that of every weight, except that with ``fp8_weights`` the
    projections (MLA's, the dense MLPs', the shared and routed experts') are FP8-resident with block
    scales (``layers.linear``, ``layers.moe.RoutedExperts``), sharing one dequantisation scratch
    buffer; embeddings, LM head, norms and the router stay in ``dtype``.

    ``mtp``: None (no MTP module), ``"shared_embedding"`` or ``"own_embedding"`` (the MTP module
    reads token embeddings from ``model.embed_tokens`` or from its own ``embed_tokens``)."""

    def __init__(
        self, config: DeepseekConfig, ctx: ParallelContext, dtype: torch.dtype = torch.float32,
        fp8_weights: bool = False, mtp: str | None = None,
    ) -> None:  # fmt: skip
        super().__init__()
        if mtp not in (None, "shared_embedding", "own_embedding"):
            raise ValueError(f"mtp must be None, 'shared_embedding' or 'own_embedding', got {mtp!r}")
        self.config, self.ctx, self.dtype, self.fp8_weights = config, ctx, dtype, fp8_weights
        self.model = DeepseekModel(config, ctx, dtype, fp8_weights, mtp)
        self.lm_head = ParallelLMHead(config.vocab_size, config.hidden_size, ctx, dtype)
        self.rotary = Rotary(config, ctx.device)
        self.scratch = share_scratch(self)

    @torch.inference_mode()
    def forward(
        self,
        input_ids: torch.Tensor,  # Long[T]
        positions: torch.Tensor,  # Long[T]
        kv_caches: list[torch.Tensor],  # per layer [num_blocks, block_size, r + rope]
        meta: AttentionMetadata,
    ) -> torch.Tensor:
        """Hidden states [T, hidden_size] after the final norm; writes the new tokens' latents.

        Every rank of an attention group must call this with the same inputs (the group's batch is
        replicated over its TP ranks); with data-parallel attention, the ranks of an idle group call
        ``idle_step`` instead, so the MoE all-to-alls line up.
        """
        L = self.config.num_hidden_layers
        if len(kv_caches) not in (L, self.num_cache_layers):
            raise ValueError(f"expected {L} kv caches, got {len(kv_caches)}")
        _check_inputs(input_ids, positions, meta)
        cos_sin = self.rotary.cos_sin(positions)
        x = self.model.embed_tokens(input_ids)  # [T, H]
        for layer, cache in zip(self.model.layers[:L], kv_caches[:L], strict=True):
            x = layer(x, cos_sin, self.rotary, cache, meta)
        return self.model.norm(x)

    @property
    def mtp(self) -> MTPLayer | None:
        """The multi-token-prediction module (``fathom.model.mtp``), if built."""
        last = self.model.layers[-1]
        return last if isinstance(last, MTPLayer) else None

    @property
    def num_cache_layers(self) -> int:
        """Latent-cache layers this model writes: the decoder layers, and the MTP module's own."""
        return self.config.num_hidden_layers + (self.mtp is not None)

    @torch.inference_mode()
    def forward_mtp(
        self,
        input_ids: torch.Tensor,  # Long[T]: token i + 1 of each entry
        positions: torch.Tensor,  # Long[T]: i + 1
        previous_hidden: torch.Tensor,  # [T, H]: h_i (the target's, after the final norm) or the MTP's own
        kv_cache: torch.Tensor,  # the MTP module's latent cache (the last of kv_caches)
        meta: AttentionMetadata,  # entry i at the slot of position i
    ) -> torch.Tensor:
        """MTP entries (``fathom.model.mtp``) -> the block's outputs [T, H], before shared_head's norm;
        writes their latents. Draft logits: ``compute_draft_logits``."""
        mtp = self.mtp
        if mtp is None:
            raise ValueError("this model was built without its MTP module")
        _check_inputs(input_ids, positions, meta)
        embed = getattr(mtp, "embed_tokens", self.model.embed_tokens)
        x = mtp.combine(embed(input_ids), previous_hidden)
        return mtp(x, self.rotary.cos_sin(positions), self.rotary, kv_cache, meta)

    @torch.inference_mode()
    def compute_draft_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """MTP outputs [N, H] -> float32 draft logits [N, vocab_size], full vocab on every rank."""
        return self.mtp.logits(hidden)

    @torch.inference_mode()
    def idle_step(self) -> None:
        """Data-parallel attention, a step in which this rank's attention group has no tokens: join
        every MoE layer's all-to-all with an empty batch (the other groups' tokens may be routed to
        this rank's experts), in layer order, as ``forward`` would. No-op without the all-to-all MoE."""
        if not self.ctx.moe_a2a:
            return
        empty = torch.empty(0, self.config.hidden_size, dtype=self.dtype, device=self.ctx.device)
        for layer in self.model.layers:
            if isinstance(layer.mlp, MoE):
                layer.mlp(empty)

    def moe_layers(self) -> list[MoE]:
        """The MoE layers in order (their placements and token counts: EPLB)."""
        return [layer.mlp for layer in self.model.layers if isinstance(layer.mlp, MoE)]

    @torch.inference_mode()
    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [N, hidden_size] -> float32 logits [N, vocab_size], full vocab on every rank."""
        return self.lm_head(hidden)

    def set_attention_mode(self, mode: str) -> None:
        """'auto' (cost-based per sequence), or force 'expand' / 'absorb' MLA (tests, benchmarks)."""
        if mode not in MODES:
            raise ValueError(f"attention mode must be one of {MODES}, got {mode!r}")
        for layer in self.model.layers:
            layer.self_attn.mode = mode

    def set_fast_paths(self, *, batch_decode: bool | None = None, moe_dense_limit: int | None = None) -> None:
        """Choose the small-batch code paths; tests force each to compare them.

        ``batch_decode``: MLA attends all q_i = 1 sequences of a step in one batch (else one by one;
        default on). ``moe_dense_limit``: MoE layers run their routed experts dense when T × local
        experts is at most this (0: always grouped by expert; default ``moe.DENSE_LIMIT`` where
        dense pays off for the layer's expert size, else 0)."""
        if moe_dense_limit is not None and (isinstance(moe_dense_limit, bool) or moe_dense_limit < 0):
            raise ValueError(f"moe_dense_limit must be an int >= 0, got {moe_dense_limit!r}")
        for layer in self.model.layers:
            if batch_decode is not None:
                layer.self_attn.batch_decode = bool(batch_decode)
            if moe_dense_limit is not None and isinstance(layer.mlp, MoE):
                layer.mlp.experts.dense_limit = int(moe_dense_limit)


def _check_inputs(input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata) -> None:
    if input_ids.shape != positions.shape or input_ids.shape[0] != meta.slot_mapping.shape[0]:
        raise ValueError("input_ids, positions and meta.slot_mapping must all have T entries")
