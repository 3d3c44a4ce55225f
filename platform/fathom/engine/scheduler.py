"""Continuous batching: each step mixes decodes and (chunked) prefills within a token budget.

Order of business each step:
1. running sequences, highest priority first, get their next tokens (1 for a decode, a chunk
   of the remaining prompt while prefilling); when KV blocks run out, the lowest-priority
   running sequence is preempted (blocks freed, recomputed later) until the current fits;
2. if nothing was preempted, waiting sequences are admitted in policy order while the
   budget, `max_num_seqs` and free blocks allow, reusing prefix-cached blocks.
Plain Python, no torch; `BlockManager` owns the block accounting.

Speculative decoding (`num_speculative_tokens` = k > 0, docs/speculative_decoding.md): a decoding
sequence's step also carries the drafts proposed for it last step (as many as the budget and its
length cap allow), and a chunk that samples reserves k - 1 more slots for the MTP module's
recurrent entries. After the step the sequence keeps the accepted drafts only: its computed
length counts them, and the blocks past its new length are freed (rollback: the rejected
positions' latents are rewritten before they are read again). A prefix-cache hit gives back its
last block when k > 0: that block's last MTP entry depends on the token after it.
"""

from dataclasses import dataclass, field

from fathom.engine.block_manager import BlockManager, block_hash
from fathom.engine.scheduling_policy import FcfsPolicy, SchedulingPolicy
from fathom.engine.sequence import Sequence, SequenceStatus


@dataclass(frozen=True)
class SchedulerConfig:
    max_num_seqs: int
    max_num_batched_tokens: int
    enable_chunked_prefill: bool = True
    num_speculative_tokens: int = 0


@dataclass
class ScheduledChunk:
    """`num_tokens` new tokens of `seq`, starting at position `start`; the last `num_drafts` of
    them are its drafts (speculative decoding), the others its own tokens."""

    seq: Sequence
    start: int
    num_tokens: int
    num_drafts: int = 0

    @property
    def samples(self) -> bool:
        """True when the chunk reaches the end of the sequence, so its last logits are sampled."""
        return self.start + self.num_tokens - self.num_drafts == len(self.seq.token_ids)


@dataclass
class SchedulerOutput:
    chunks: list[ScheduledChunk] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(c.num_tokens for c in self.chunks)


@dataclass
class PrefixStats:
    queried_tokens: int = 0
    hit_tokens: int = 0


class Scheduler:
    def __init__(self, config: SchedulerConfig, blocks: BlockManager, policy: SchedulingPolicy | None = None):
        self.config = config
        self.blocks = blocks
        self.policy = policy or FcfsPolicy()
        self.waiting: list[Sequence] = []
        self.running: list[Sequence] = []
        self.prefix_stats = PrefixStats()
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        seq.status = SequenceStatus.WAITING
        self.waiting.append(seq)

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        self.policy.begin_step(self.waiting, self.running, self.config.max_num_seqs)
        budget = self._schedule_running(out, self.config.max_num_batched_tokens)
        if not out.preempted:  # blocks are short: admitting more now would only thrash
            self._admit_waiting(out, budget)
        for chunk in out.chunks:
            self.policy.on_scheduled(chunk.seq, chunk.num_tokens)
        return out

    def _schedule_running(self, out: SchedulerOutput, budget: int) -> int:
        self.running.sort(key=self.policy.running_key)
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            n = min(seq.num_uncomputed, budget)
            if n < seq.num_uncomputed and not self.config.enable_chunked_prefill:
                i += 1
                continue
            d = self._num_drafts(seq, budget - n) if n == seq.num_uncomputed else 0
            if not self._grow_or_preempt(seq, n + d + self._lookahead(seq, seq.num_computed_tokens, n), out):
                break  # seq itself was preempted: everything after it is lower priority
            out.chunks.append(ScheduledChunk(seq, seq.num_computed_tokens, n + d, d))
            budget -= n + d
            i += 1
        return budget

    def _num_drafts(self, seq: Sequence, budget: int) -> int:
        """Drafts of seq to verify this step: within the budget, and no position past its length cap
        (verifying d drafts emits up to d + 1 tokens; those past the cap are dropped)."""
        return max(0, min(len(seq.draft_token_ids), budget, seq.request.max_total_tokens - len(seq.token_ids)))

    def _lookahead(self, seq: Sequence, computed: int, n: int) -> int:
        """Slots reserved past a chunk (n tokens after `computed`) that samples, for the MTP
        module's recurrent entries."""
        k = self.config.num_speculative_tokens
        return k - 1 if k and computed + n == len(seq.token_ids) else 0

    def _grow_or_preempt(self, seq: Sequence, n: int, out: SchedulerOutput) -> bool:
        """Allocate blocks for n more tokens of seq, preempting from the back of `running`."""
        need = self.blocks.blocks_needed(seq.num_computed_tokens + n) - len(seq.block_table)
        while need > self.blocks.num_free:
            victim = self.running[-1]
            self.preempt(victim)
            out.preempted.append(victim)
            if victim is seq:
                return False
        seq.block_table += self.blocks.allocate(max(need, 0))
        return True

    def _admit_waiting(self, out: SchedulerOutput, budget: int) -> None:
        """Admit in policy order; a waiting sequence that does not fit may preempt the running
        sequences its policy names (FCFS: strictly lower priority only; fair share: also a
        tenant over its share)."""
        self.waiting.sort(key=self.policy.key)
        while self.waiting and self.waiting[0] not in out.preempted:
            seq = self.waiting[0]
            n = self._try_admit(seq, out, budget)
            if n is not None:
                budget -= n
                continue
            freed = self._preempt_for(seq, out)
            if freed is None:
                break
            budget += freed

    def _try_admit(self, seq: Sequence, out: SchedulerOutput, budget: int) -> int | None:
        """Schedule seq's first chunk (reusing prefix-cached blocks); None if it does not fit."""
        if budget <= 0 or len(self.running) >= self.config.max_num_seqs:
            return None
        hits, hashes = ([], []) if seq.computes_prompt_logprobs else \
            self.blocks.match_prefix(seq.token_ids, seq.request.hash_salt)
        if hits and self.config.num_speculative_tokens:
            hits, hashes = hits[:-1], hashes[:-1]  # its last MTP entry read the token after it
        computed = len(hits) * self.blocks.block_size
        n = min(len(seq.token_ids) - computed, budget)
        if n < len(seq.token_ids) - computed and not self.config.enable_chunked_prefill:
            return None
        new_blocks = self.blocks.blocks_needed(computed + n + self._lookahead(seq, computed, n)) - len(hits)
        if not self.blocks.can_take(hits, new_blocks):
            return None
        self.blocks.take(hits)
        seq.block_table = hits + self.blocks.allocate(new_blocks)
        seq.block_hashes, seq.num_computed_tokens = hashes, computed
        self._count_prefix_hit(seq, computed)
        self.waiting.remove(seq)
        seq.status = SequenceStatus.RUNNING
        self.running.append(seq)
        out.chunks.append(ScheduledChunk(seq, computed, n))
        return n

    def _preempt_for(self, seq: Sequence, out: SchedulerOutput) -> int | None:
        """Preempt the running sequence the policy names to make room for waiting seq; returns
        the step budget its (now withdrawn) chunk had used, or None if there is no victim."""
        victim = self.policy.preempt_for(seq, self.running, self.config.max_num_seqs)
        if victim is None:
            return None
        chunk = next((c for c in out.chunks if c.seq is victim), None)
        if chunk is not None:
            out.chunks.remove(chunk)
        self.preempt(victim)
        out.preempted.append(victim)
        return chunk.num_tokens if chunk is not None else 0

    def _count_prefix_hit(self, seq: Sequence, computed: int) -> None:
        if seq.admitted_once:
            return
        seq.admitted_once = True
        if seq.index == 0:
            self.prefix_stats.queried_tokens += seq.prompt_len
            self.prefix_stats.hit_tokens += computed
            seq.request.num_cached_tokens = computed

    def preempt(self, seq: Sequence) -> None:
        """Recompute-style preemption: drop the KV blocks and put the sequence back in line."""
        self.running.remove(seq)
        self._release(seq)
        self.num_preemptions += 1
        self.add(seq)

    def finish(self, seq: Sequence) -> None:
        """Remove a finished or aborted sequence and free its blocks at once."""
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
        elif seq.status is SequenceStatus.WAITING and seq in self.waiting:
            self.waiting.remove(seq)
        self._release(seq)
        seq.status = SequenceStatus.FINISHED

    def _release(self, seq: Sequence) -> None:
        self.blocks.free(seq.block_table)
        seq.block_table, seq.block_hashes, seq.num_computed_tokens = [], [], 0
        seq.draft_token_ids = []

    def on_computed(self, chunk: ScheduledChunk, accepted: list[int] | None = None) -> None:
        """After a step: advance the sequence and publish its newly full blocks to the cache.
        ``accepted``: the drafts the step accepted (speculative decoding; not appended to the
        sequence yet); the rejected ones' positions are rolled back."""
        seq, accepted = chunk.seq, accepted or []
        seq.num_computed_tokens = chunk.start + chunk.num_tokens - chunk.num_drafts + len(accepted)
        token_ids = seq.token_ids + accepted if accepted else seq.token_ids
        bs = self.blocks.block_size
        while (len(seq.block_hashes) + 1) * bs <= seq.num_computed_tokens:
            i = len(seq.block_hashes)
            parent = seq.block_hashes[-1] if seq.block_hashes else None
            h = block_hash(parent, seq.request.hash_salt, token_ids[i * bs:(i + 1) * bs])
            seq.block_hashes.append(h)
            self.blocks.register(seq.block_table[i], h)
        if self.config.num_speculative_tokens:  # keep the blocks of the computed tokens and the next one
            keep = self.blocks.blocks_needed(seq.num_computed_tokens + 1)
            self.blocks.free(seq.block_table[keep:])
            del seq.block_table[keep:]
