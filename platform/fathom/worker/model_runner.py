"""Runs one engine step on one rank: StepInput lists -> tensors + AttentionMetadata -> model
forward over the paged latent KV cache -> last-token logits -> sampled tokens.

Every rank of a model instance runs the same forward (the batch is replicated over TP ranks);
only the driver rank (rank 0) samples and returns tokens. A step with drafts (speculative
decoding) is verified and drafted by ``speculative.MtpDrafter``."""

import torch

from fathom.engine.step_input import StepInput, StepOutput
from fathom.model.attention_metadata import AttentionMetadata
from fathom.model.kv_cache import allocate_kv_caches
from fathom.worker.sampler import Sampler
from fathom.worker.speculative import MtpDrafter
from fathom.worker.structured import Grammars


class ModelRunner:
    def __init__(self, model, num_blocks: int, block_size: int, kv_dtype: torch.dtype | None = None,
                 samples: bool = True, model_dir=None):
        self.model = model
        self.device = model.ctx.device
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.kv_caches = allocate_kv_caches(model.config, num_blocks, block_size, kv_dtype or model.dtype,
                                            self.device, model.num_cache_layers)
        self.samples = samples
        self.sampler = Sampler(self.device)
        self.grammars = Grammars(model_dir, self.device)  # structured outputs (driver rank only)
        self.drafter = (MtpDrafter(model, self.kv_caches, block_size, self.sampler if samples else None)
                        if model.mtp is not None else None)  # fmt: skip

    @torch.inference_mode()
    def execute(self, step: StepInput) -> StepOutput | None:
        """Forward the step's tokens; return sampled tokens (driver rank) or None (other ranks)."""
        for seq_id in step.freed_seq_ids:
            self.sampler.free(seq_id)
            self.grammars.free(seq_id)
        if self.samples:
            for spec in step.new_specs:
                self.sampler.add(spec)
                if spec.params.structured is not None:
                    self.grammars.add(spec.seq_id, spec.params.structured, self.model.config.vocab_size)
        seq_lens = [s + q for s, q in zip(step.starts, step.query_lens)]
        meta = AttentionMetadata.build(step.query_lens, seq_lens, step.block_tables, self.block_size, self.device)
        input_ids = torch.tensor(step.token_ids, dtype=torch.long, device=self.device)  # [T]
        hidden = self.model(input_ids, meta.positions(), self.kv_caches, meta)  # [T, H]
        if step.drafts is not None:
            if self.drafter is None:
                raise ValueError("a step with drafts, but the model has no MTP module")
            return self.drafter.step(step, meta, hidden)
        if not step.sample_rows:
            return StepOutput([], [], []) if self.samples else None
        rows = torch.tensor(step.sample_rows, dtype=torch.long, device=self.device)
        last = meta.query_start_loc[1:][rows] - 1  # [S] index of each sampled row's last token
        sampled = [step.seq_ids[r] for r in step.sample_rows]
        # grammar masks on the CPU while the accelerator runs the forward (launched above)
        allowed = self.grammars.allowed(sampled, self.model.config.vocab_size) if self.samples else None
        logits = self.model.compute_logits(hidden[last])  # [S, V] float32
        if not self.samples:
            return None
        out = self.sampler.sample(logits, sampled, allowed)
        self.grammars.accept(sampled, out.token_ids)
        return out
