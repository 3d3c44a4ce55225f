"""Data-parallel attention: D attention groups, each with its own `Scheduler` and `BlockManager`
(its own latent KV cache on its own ranks), behind the one scheduler interface `LLMEngine` uses.

A sequence is placed on a group when first added and stays there (its KV blocks and its sampler
state live on that group's ranks): the samples of one request follow its first sample (they share
its prompt's cached blocks), a new request goes to the group with the fewest unfinished sequences
(ties: the lowest group). Each step every group schedules within its own limits (`max_num_seqs`,
`max_num_batched_tokens` and blocks are per group: each group runs its own forward), with its own
prefix cache and preemption; the policy (FCFS or tenants' fair share) is shared, so tenants' usage
counts across groups. Plain Python, no torch.
"""

from fathom.engine.block_manager import BlockManager
from fathom.engine.scheduler import PrefixStats, ScheduledChunk, Scheduler, SchedulerConfig, SchedulerOutput
from fathom.engine.scheduling_policy import FcfsPolicy, SchedulingPolicy
from fathom.engine.sequence import Sequence


class DataParallelBlocks:
    """The groups' block managers seen as the engine's one: capacity per group (a sequence lives in
    one group), usage over all groups."""

    def __init__(self, groups: list[BlockManager]):
        self.groups = groups
        self.num_blocks = groups[0].num_blocks  # per group: what one sequence can ever use
        self.block_size = groups[0].block_size

    @property
    def num_used(self) -> int:
        return sum(b.num_used for b in self.groups)

    @property
    def num_blocks_total(self) -> int:
        return self.num_blocks * len(self.groups)


class DataParallelScheduler:
    def __init__(
        self,
        config: SchedulerConfig,
        num_groups: int,
        num_blocks: int,
        block_size: int,
        policy: SchedulingPolicy | None = None,
    ):
        self.config = config
        self.policy = policy or FcfsPolicy()
        self.groups = [Scheduler(config, BlockManager(num_blocks, block_size), self.policy)
                       for _ in range(num_groups)]  # fmt: skip
        self.blocks = DataParallelBlocks([s.blocks for s in self.groups])
        self.group_of: dict[int, int] = {}  # seq_id -> attention group, while the sequence lives

    def add(self, seq: Sequence) -> None:
        g = self.group_of.get(seq.seq_id)
        if g is None:
            siblings = (self.group_of[s.seq_id] for s in seq.request.seqs if s.seq_id in self.group_of)
            g = next(siblings, None)
            if g is None:
                g = min(range(len(self.groups)), key=lambda i: (self._load(i), i))
            self.group_of[seq.seq_id] = g
        self.groups[g].add(seq)

    def _load(self, g: int) -> int:
        s = self.groups[g]
        return len(s.running) + len(s.waiting)

    def schedule(self) -> SchedulerOutput:
        """Every group's step, group 0's chunks first."""
        out = SchedulerOutput()
        for s in self.groups:
            part = s.schedule()
            out.chunks += part.chunks
            out.preempted += part.preempted
        return out

    def groups_of(self, chunks: list[ScheduledChunk]) -> list[int]:
        """The attention group of each chunk (of a `schedule()` output), in order."""
        return [self.group_of[c.seq.seq_id] for c in chunks]

    def on_computed(self, chunk: ScheduledChunk, accepted: list[int] | None = None) -> None:
        self.groups[self.group_of[chunk.seq.seq_id]].on_computed(chunk, accepted)

    def finish(self, seq: Sequence) -> None:
        """As `Scheduler.finish`; a sample never added (still pending) finishes without a group."""
        self.groups[self.group_of.pop(seq.seq_id, 0)].finish(seq)

    @property
    def running(self) -> list[Sequence]:
        return [seq for s in self.groups for seq in s.running]

    @property
    def waiting(self) -> list[Sequence]:
        return [seq for s in self.groups for seq in s.waiting]

    @property
    def prefix_stats(self) -> PrefixStats:
        return PrefixStats(
            sum(s.prefix_stats.queried_tokens for s in self.groups),
            sum(s.prefix_stats.hit_tokens for s in self.groups),
        )

    @property
    def num_preemptions(self) -> int:
        return sum(s.num_preemptions for s in self.groups)
