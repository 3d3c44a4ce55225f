"""A pure-Python stand-in for the model, for engine unit tests.

`FakeExecutor` keeps a simulated paged KV cache (slot -> token id, written through the block
tables exactly as the real model writes latents) and predicts the next token from the context
it reads back through the block table. If the engine ever hands it a wrong block table, a
stale prefix-cache block or a wrong position, the prediction differs from `reference_next`,
which sees the true token history: so these tests check the bookkeeping, not just the flow."""

import time

import torch

from fathom.engine.step_input import StepInput
from fathom.worker.sampler import Sampler

VOCAB = 97


def reference_next(context: list[int]) -> int:
    """The 'model': a deterministic function of the whole context."""
    acc = len(context)
    for pos, tok in enumerate(context):
        acc = (acc * 31 + tok * (pos + 7)) % 1_000_003
    return acc % VOCAB


def reference_greedy(prompt: list[int], n: int) -> list[int]:
    seq = list(prompt)
    for _ in range(n):
        seq.append(reference_next(seq))
    return seq[len(prompt):]


class _AlwaysHealthy:
    """The Executor protocol's lifecycle for in-process fakes: always healthy, nothing to stop."""

    def check_health(self):
        pass

    def ping(self):
        pass

    def rank_nodes(self):
        return None

    def shutdown(self):
        pass


class FakeExecutor(_AlwaysHealthy):
    def __init__(self, num_blocks: int, block_size: int):
        self.num_kv_blocks = num_blocks
        self.vocab_size = VOCAB
        self.block_size = block_size
        self.slots: dict[int, int] = {}
        self.sampler = Sampler("cpu")
        self.steps: list[StepInput] = []
        self.dead = False
        self.delay = 0.0  # seconds per step, to keep requests in flight in async tests

    def execute(self, step: StepInput):
        from fathom.engine.errors import EngineDeadError

        if self.dead:
            raise EngineDeadError("fake rank died")
        self.steps.append(step)
        time.sleep(self.delay)
        for s in step.freed_seq_ids:
            self.sampler.free(s)
        for spec in step.new_specs:
            self.sampler.add(spec)
        offset, rows = 0, []
        bs = self.block_size
        for start, q, table in zip(step.starts, step.query_lens, step.block_tables):
            for i, tok in enumerate(step.token_ids[offset:offset + q]):
                pos = start + i
                self.slots[table[pos // bs] * bs + pos % bs] = tok
            context = [self.slots[table[p // bs] * bs + p % bs] for p in range(start + q)]
            rows.append(reference_next(context))
            offset += q
        logits = torch.full((len(step.sample_rows), VOCAB), -5.0)
        for j, r in enumerate(step.sample_rows):
            logits[j, rows[r]] = 5.0
            logits[j, (rows[r] + 1) % VOCAB] = 4.0
        return self.sampler.sample(logits, [step.seq_ids[r] for r in step.sample_rows])


class DataParallelFakeExecutor(_AlwaysHealthy):
    """D `FakeExecutor`s as D attention groups, each with its own simulated KV cache (block ids
    overlap between groups, so a row run on the wrong group reads the wrong tokens): the step is
    split and merged by the real `fathom.worker.dp_step` functions."""

    def __init__(self, groups: int, num_blocks: int, block_size: int):
        self.groups = [FakeExecutor(num_blocks, block_size) for _ in range(groups)]
        self.num_kv_blocks, self.vocab_size = num_blocks, VOCAB
        self.rows_per_group = [0] * groups
        self.idle_steps = [0] * groups

    def execute(self, step: StepInput):
        from fathom.engine.step_input import StepOutput
        from fathom.worker.dp_step import group_input, merge_outputs

        outs = []
        for g, fake in enumerate(self.groups):
            mine = group_input(step, g)
            self.rows_per_group[g] += len(mine.seq_ids)
            self.idle_steps[g] += not mine.seq_ids
            outs.append(fake.execute(mine) if mine.seq_ids else StepOutput([], [], []))
        return merge_outputs(step, outs)
