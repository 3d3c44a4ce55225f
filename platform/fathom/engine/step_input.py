"""What the driver sends to the executor each step and what comes back: plain lists, cheap
to pickle to Ray rank workers (no torch tensors)."""

from dataclasses import dataclass, field

from fathom.engine.sampling_params import SamplingParams


@dataclass(frozen=True)
class SamplingSpec:
    """Sent once per sequence, the first time a worker samples it."""

    seq_id: int
    params: SamplingParams
    seed: int  # seeds this sequence's own torch.Generator
    prompt_token_ids: list[int] | None = None  # only when repetition_penalty != 1
    min_tokens_suppress: list[int] = field(default_factory=list)  # EOS + stop ids while < min_tokens


@dataclass(frozen=True)
class DraftPlan:
    """Speculative decoding's part of a step, one entry per row of the batch (docs/speculative_decoding.md).

    ``num_drafts[i]``: the last that many tokens of row i are drafts to verify (a sampling row);
    ``num_proposals[i]``: drafts the MTP module proposes for row i's next step (sampling rows);
    ``next_token_ids[i]``: for a row that does not sample (a prefill chunk short of the prompt's
    end), the prompt token after its chunk, which the MTP entry of the chunk's last position
    reads; -1 for sampling rows (their next token is the one sampled)."""

    num_drafts: list[int]
    num_proposals: list[int]
    next_token_ids: list[int]


@dataclass
class StepInput:
    """One forward over B sequences flattened to T tokens.

    Sequence i contributes `query_lens[i]` new tokens (its slice of `token_ids`) at positions
    `starts[i] ...`; its KV blocks are `block_tables[i]`. Rows listed in `sample_rows` have
    their last token's logits sampled, in that order. `prompt_logprobs` asks for prompt
    logprobs: (row, targets, k) scores token `targets[t]` (and the k most likely tokens) under
    the logits of the row's t-th query token, for t < len(targets)."""

    seq_ids: list[int]
    token_ids: list[int]
    starts: list[int]
    query_lens: list[int]
    block_tables: list[list[int]]
    sample_rows: list[int]
    new_specs: list[SamplingSpec] = field(default_factory=list)
    prompt_logprobs: list[tuple[int, list[int], int]] = field(default_factory=list)
    freed_seq_ids: list[int] = field(default_factory=list)
    trace_contexts: list[dict[str, str]] = field(default_factory=list)  # of the batch's requests: span links
    groups: list[int] = field(default_factory=list)  # data-parallel attention: each row's group ([]: one group)
    drafts: DraftPlan | None = None  # speculative decoding (None: off)


@dataclass
class StepOutput:
    """Sampled tokens for `StepInput.sample_rows`, in order. `logprobs[j]` is None unless that
    sequence asked for logprobs; then `top_logprobs[j]` lists (token, logprob) best first.
    `errors[j]` says why row j could not be sampled (its token is then -1): that sequence's
    request fails alone; the forward itself succeeded, so every other row is valid.
    `prompt_logprobs[i]` answers `StepInput.prompt_logprobs[i]`: per target, (logprob, top k).
    Speculative decoding: ``token_ids[j]`` is the first token row j emits; ``extra_tokens[j]`` the
    (token, logprob, top_logprobs) it emits after it, in order (accepted drafts, then the token
    sampled where a draft was rejected or after all were accepted); ``draft_token_ids[j]`` the
    drafts proposed for its next step. Both lists are empty when it is off."""

    token_ids: list[int]
    logprobs: list[float | None]
    top_logprobs: list[list[tuple[int, float]] | None]
    errors: dict[int, str] = field(default_factory=dict)
    prompt_logprobs: list[list[tuple[float, list[tuple[int, float]]]]] = field(default_factory=list)
    # EPLB, on the step after which the experts were rebalanced: routed (token, choice) pairs per
    # logical expert (summed over MoE layers and ranks) since the previous rebalance, and the worst
    # MoE layer's max / mean pairs per expert shard over that window
    moe_expert_tokens: list[int] | None = None
    moe_imbalance: float | None = None
    extra_tokens: list[list[tuple[int, float | None, list[tuple[int, float]] | None]]] = field(default_factory=list)
    draft_token_ids: list[list[int]] = field(default_factory=list)
