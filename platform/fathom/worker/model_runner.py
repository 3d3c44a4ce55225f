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

PROMPT_LOGITS_ROWS = 128  # prompt-logprob rows per logits computation: [128, vocab] float32 at a time


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
        prompt_logprobs = self._prompt_logprobs(step, hidden, meta) if step.prompt_logprobs else []
        if step.drafts is not None:
            if self.drafter is None:
                raise ValueError("a step with drafts, but the model has no MTP module")
            out = self.drafter.step(step, meta, hidden)
            if out is not None:
                out.prompt_logprobs = prompt_logprobs
            return out
        if not step.sample_rows:
            return StepOutput([], [], [], prompt_logprobs=prompt_logprobs) if self.samples else None
        rows = torch.tensor(step.sample_rows, dtype=torch.long, device=self.device)
        last = meta.query_start_loc[1:][rows] - 1  # [S] index of each sampled row's last token
        sampled = [step.seq_ids[r] for r in step.sample_rows]
        # grammar masks on the CPU while the accelerator runs the forward (launched above)
        allowed = self.grammars.allowed(sampled, self.model.config.vocab_size) if self.samples else None
        logits = self.model.compute_logits(hidden[last])  # [S, V] float32
        if not self.samples:
            return None
        out = self.sampler.sample(logits, sampled, allowed)
        out.prompt_logprobs = prompt_logprobs
        self.grammars.accept(sampled, out.token_ids)
        return out

    def _prompt_logprobs(self, step: StepInput, hidden: torch.Tensor, meta: AttentionMetadata) -> list:
        """Log-softmax over the logits of every query token that predicts a prompt token
        (`StepInput.prompt_logprobs`), in slices of PROMPT_LOGITS_ROWS rows so a long chunk
        never holds [T, V] logits at once. Every rank computes the logits (they may gather over
        the TP group); only the driver returns the values."""
        starts = meta.query_start_loc.tolist()
        positions = torch.cat([torch.arange(starts[r], starts[r] + len(t), device=self.device)
                               for r, t, _ in step.prompt_logprobs])
        targets = torch.tensor([t for _, ts, _ in step.prompt_logprobs for t in ts], device=self.device)
        k = max(k for _, _, k in step.prompt_logprobs)
        chosen, top_vals, top_ids = [], [], []
        for i in range(0, len(positions), PROMPT_LOGITS_ROWS):
            logprobs = torch.log_softmax(self.model.compute_logits(hidden[positions[i:i + PROMPT_LOGITS_ROWS]]), -1)
            chosen.append(logprobs.gather(1, targets[i:i + PROMPT_LOGITS_ROWS, None])[:, 0])
            vals, ids = logprobs.topk(k, dim=-1)
            top_vals.append(vals)
            top_ids.append(ids)
        if not self.samples:
            return []
        chosen, top_vals, top_ids = torch.cat(chosen).tolist(), torch.cat(top_vals).tolist(), torch.cat(top_ids).tolist()
        out, at = [], 0
        for _, ts, kr in step.prompt_logprobs:
            out.append([(chosen[at + t], list(zip(top_ids[at + t][:kr], top_vals[at + t][:kr]))) for t in range(len(ts))])
            at += len(ts)
        return out
