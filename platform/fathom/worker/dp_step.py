"""Data-parallel attention on the worker side: every rank receives the whole step (so all derive
the same collective schedule) and runs only its attention group's rows; a group with no rows
this step joins the MoE all-to-alls with an empty batch (``DeepseekForCausalLM.idle_step``).
Each group's driver (its TP rank 0) samples the group's rows; the executor merges the drivers'
outputs back into the step's row order."""

from fathom.engine.step_input import StepInput, StepOutput


def group_input(step: StepInput, group: int) -> StepInput:
    """The rows of ``step`` in attention ``group``, with their sampling specs; freed ids and trace
    links are passed to every group (freeing an id a group never held is a no-op)."""
    rows = [i for i, g in enumerate(step.groups) if g == group]
    offsets = [0]
    for q in step.query_lens:
        offsets.append(offsets[-1] + q)
    mine = {step.seq_ids[i] for i in rows}
    local = {i: j for j, i in enumerate(rows)}
    sampled = set(step.sample_rows)
    return StepInput(
        seq_ids=[step.seq_ids[i] for i in rows],
        token_ids=[t for i in rows for t in step.token_ids[offsets[i] : offsets[i + 1]]],
        starts=[step.starts[i] for i in rows],
        query_lens=[step.query_lens[i] for i in rows],
        block_tables=[step.block_tables[i] for i in rows],
        sample_rows=[j for j, i in enumerate(rows) if i in sampled],
        prompt_logprobs=[(local[r], ts, k) for r, ts, k in step.prompt_logprobs if r in local],
        new_specs=[s for s in step.new_specs if s.seq_id in mine],
        freed_seq_ids=step.freed_seq_ids,
        trace_contexts=step.trace_contexts,
    )


def merge_outputs(step: StepInput, outputs: list[StepOutput]) -> StepOutput:
    """Group g's driver output ``outputs[g]`` (its sampled rows in order) -> the step's, in
    ``step.sample_rows`` order; a row's error follows it; prompt logprobs in
    ``step.prompt_logprobs`` order."""
    merged = StepOutput([], [], [])
    taken_prompt = [0] * len(outputs)
    for row, _, _ in step.prompt_logprobs:
        g = step.groups[row]
        merged.prompt_logprobs.append(outputs[g].prompt_logprobs[taken_prompt[g]])
        taken_prompt[g] += 1
    taken = [0] * len(outputs)
    for row in step.sample_rows:
        g = step.groups[row]
        out, j = outputs[g], taken[g]
        taken[g] += 1
        if j in out.errors:
            merged.errors[len(merged.token_ids)] = out.errors[j]
        merged.token_ids.append(out.token_ids[j])
        merged.logprobs.append(out.logprobs[j])
        merged.top_logprobs.append(out.top_logprobs[j])
    return merged


def run_group_step(runner, step: StepInput, dp_rank: int) -> StepOutput | None:
    """This rank's part of a data-parallel step: its group's rows through ``runner`` (a
    ``ModelRunner``), or, when the group has none, the freed ids released and an idle MoE pass."""
    mine = group_input(step, dp_rank)
    if mine.seq_ids:
        return runner.execute(mine)
    for seq_id in mine.freed_seq_ids:
        runner.sampler.free(seq_id)
        runner.grammars.free(seq_id)
    runner.model.idle_step()
    return StepOutput([], [], []) if runner.samples else None
