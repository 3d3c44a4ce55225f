"""The runner's half of MTP speculative decoding (docs/speculative_decoding.md): verify, then draft.

After the target's forward over a step (whose decoding rows carry the drafts proposed last step
after their last token), on every rank:

1. the target's logits at every verified position of the sampling rows; rank 0 verifies them
   (``rejection.verify``) and broadcasts what each row emits, so every rank knows the accepted
   tokens (the MTP forward is a collective like the target's);
2. the MTP module runs one entry per position whose target KV is now valid (a prefill chunk's
   positions; a decoding row's last token and its accepted drafts): entry i reads h_i and token
   i + 1 (the prompt's, an accepted draft, or the token just sampled) and writes its latent to the
   slot of position i in the MTP module's cache; the rejected positions are never entered;
3. from each proposing row's last entry, ``num_proposals`` greedy drafts, the module applied
   recurrently to its own output (entry i + 1: its output y_i and the draft just made).

The scheduler reserved the slots (the target's k + 1 positions, and k more for the MTP's
recurrent entries); the engine rolls back the rejected positions (their slots are rewritten
before they are read again).
"""

from itertools import accumulate

import torch

from fathom.engine.step_input import DraftPlan, StepInput, StepOutput
from fathom.model.attention_metadata import AttentionMetadata
from fathom.parallel.comm import broadcast_from_first
from fathom.worker import rejection
from fathom.worker.sampler import Sampler


class MtpDrafter:
    def __init__(self, model, kv_caches: list[torch.Tensor], block_size: int, sampler: Sampler | None):
        if model.mtp is None:
            raise ValueError("MTP speculative decoding needs the model loaded with its MTP module (mtp=True)")
        self.model, self.kv_cache, self.block_size = model, kv_caches[-1], block_size
        self.sampler = sampler  # rank 0 only
        self.device = model.ctx.device

    def step(self, step: StepInput, meta: AttentionMetadata, hidden: torch.Tensor) -> StepOutput | None:
        """Verify the step's drafts and propose the next ones; rank 0 returns the StepOutput."""
        plan = step.drafts
        offsets = meta.query_start_loc.tolist()  # row r's tokens are offsets[r] … offsets[r + 1] - 1
        out = self._verify(step, plan, offsets, hidden)
        emitted = self._share(out, step, plan)
        entries = self._entries(step, plan, offsets, emitted)
        drafts = self._propose(step, plan, hidden, offsets, entries) if entries else {}
        if out is not None:
            out.draft_token_ids = [drafts.get(r, []) for r in step.sample_rows]
        return out

    def _verify(self, step: StepInput, plan: DraftPlan, offsets: list[int], hidden) -> StepOutput | None:
        rows = step.sample_rows
        index = [p for r in rows for p in range(offsets[r + 1] - 1 - plan.num_drafts[r], offsets[r + 1])]
        logits = self.model.compute_logits(hidden[torch.tensor(index, dtype=torch.long, device=self.device)])
        if self.sampler is None:
            return None
        drafts = [step.token_ids[offsets[r + 1] - plan.num_drafts[r] : offsets[r + 1]] for r in rows]
        return rejection.verify(self.sampler, logits, [step.seq_ids[r] for r in rows], drafts)

    def _share(self, out: StepOutput | None, step: StepInput, plan: DraftPlan) -> list[list[int]]:
        """What each sampling row emits, as rank 0 decided ([] for a row that failed), on every rank."""
        rows = step.sample_rows
        emitted = [] if out is None else [
            [] if j in out.errors else [first] + [t for t, _, _ in out.extra_tokens[j]]
            for j, first in enumerate(out.token_ids)
        ]  # fmt: skip
        if not rows or self.model.ctx.tp_group is None:
            return emitted
        width = 1 + max(plan.num_drafts[r] for r in rows)
        table = torch.full((len(rows), width), -1, dtype=torch.long)
        for j, tokens in enumerate(emitted):
            table[j, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        table = broadcast_from_first(table.to(self.device), self.model.ctx).cpu()
        return [[t for t in row if t >= 0] for row in table.tolist()]

    def _entries(self, step: StepInput, plan: DraftPlan, offsets: list[int], emitted: list[list[int]]):
        """Per row with MTP entries this step: (row, number of entries e, the entries' input tokens)."""
        sampled = dict(zip(step.sample_rows, emitted, strict=True))
        entries = []
        for r, q in enumerate(step.query_lens):
            tokens = step.token_ids[offsets[r] : offsets[r] + q]
            if r in sampled:
                if not sampled[r]:
                    continue  # the row failed: its request ends
                e = q - plan.num_drafts[r] + len(sampled[r]) - 1  # its last token and the accepted drafts
                entries.append((r, e, tokens[1:e] + [sampled[r][-1]]))
            else:
                entries.append((r, q, tokens[1:] + [plan.next_token_ids[r]]))
        return entries

    def _propose(self, step: StepInput, plan: DraftPlan, hidden: torch.Tensor, offsets: list[int],
                 entries) -> dict[int, list[int]]:  # fmt: skip
        """Run the MTP entries, then draft: {sampling row: its proposed drafts}."""
        starts = [step.starts[r] for r, _, _ in entries]
        lens = [e for _, e, _ in entries]
        tables = [step.block_tables[r] for r, _, _ in entries]
        h_rows = torch.tensor([offsets[r] + i for r, e, _ in entries for i in range(e)], dtype=torch.long,
                              device=self.device)  # fmt: skip
        ids = [t for _, _, tokens in entries for t in tokens]
        y = self._forward(ids, hidden[h_rows], starts, lens, tables)
        last = [n - 1 for n in accumulate(lens)]  # each row's last entry in y
        want = [(j, r) for j, (r, _, _) in enumerate(entries) if plan.num_proposals[r] > 0]
        drafts: dict[int, list[int]] = {r: [] for _, r in want}
        ends = [starts[j] + lens[j] for j, _ in want]  # next entry index (= context length so far)
        h = y[[last[j] for j, _ in want]]
        for depth in range(max((plan.num_proposals[r] for _, r in want), default=0)):
            tokens = self.model.compute_draft_logits(h).argmax(dim=-1).tolist()
            for (_, r), t in zip(want, tokens, strict=True):
                drafts[r].append(t)
            keep = [i for i, (_, r) in enumerate(want) if plan.num_proposals[r] > depth + 1]
            if not keep:
                break
            want = [want[i] for i in keep]
            h = self._forward(
                [tokens[i] for i in keep],
                h[keep],
                [ends[i] for i in keep],
                [1] * len(keep),
                [step.block_tables[r] for _, r in want],
            )
            ends = [ends[i] + 1 for i in keep]
        return drafts

    def _forward(self, ids: list[int], previous: torch.Tensor, starts: list[int], lens: list[int], tables):
        """MTP entries starts[i] … starts[i] + lens[i] - 1 of each row -> the block's outputs."""
        seq_lens = [s + n for s, n in zip(starts, lens, strict=True)]
        meta = AttentionMetadata.build(lens, seq_lens, tables, self.block_size, self.device)
        input_ids = torch.tensor(ids, dtype=torch.long, device=self.device)
        return self.model.forward_mtp(input_ids, meta.positions() + 1, previous, self.kv_cache, meta)
