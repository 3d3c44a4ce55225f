"""Request and sequence state (plain Python). A request with `n` samples owns `n` sequences;
sample 0 prefills the prompt, the others join once it is cached and share its full blocks."""

import enum
import itertools
from dataclasses import dataclass, field

from fathom.engine.outputs import FinishReason, RequestMetrics, TokenLogprob
from fathom.engine.sampling_params import SamplingParams


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


_arrivals = itertools.count()


@dataclass(eq=False)
class Request:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    metrics: RequestMetrics
    priority: int = 0  # lower runs first (vLLM convention)
    fairness_key: str | None = None
    hash_salt: str | None = None  # prefix-cache salt: the tenant's cache_salt, or request-unique
    max_total_tokens: int = 0  # prompt + completion cap (max_model_len and max_tokens)
    arrival_order: int = field(default_factory=lambda: next(_arrivals))
    seqs: list["Sequence"] = field(default_factory=list)
    pending_samples: list["Sequence"] = field(default_factory=list)  # n>1: wait for sample 0's prompt
    num_cached_tokens: int = 0
    prompt_logprobs: dict[int, TokenLogprob] = field(default_factory=dict)  # position -> entry (1 .. len - 1)
    prompt_logprobs_sent: bool = False
    trace_context: dict[str, str] | None = None  # W3C carrier of the caller's span (fathom.telemetry)

    @property
    def finished(self) -> bool:
        return all(s.status is SequenceStatus.FINISHED for s in self.seqs)


@dataclass(eq=False)
class Sequence:
    seq_id: int
    request: Request
    index: int  # sample index within the request
    token_ids: list[int]  # prompt + generated
    status: SequenceStatus = SequenceStatus.WAITING
    num_computed_tokens: int = 0  # tokens whose latent KV is in the cache
    block_table: list[int] = field(default_factory=list)
    block_hashes: list[bytes] = field(default_factory=list)  # of the leading full computed blocks
    admitted_once: bool = False
    draft_token_ids: list[int] = field(default_factory=list)  # speculative decoding: to verify next step
    logprobs: list[TokenLogprob] = field(default_factory=list)
    text: str = ""  # detokenised output so far (stop strings cut it)
    finish_reason: FinishReason | None = None
    stop_reason: str | int | None = None
    # delta cursors: what has already been handed to the caller
    sent_tokens: int = 0
    sent_text: int = 0
    sent_done: bool = False
    detokenizer: object | None = None

    @property
    def prompt_len(self) -> int:
        return len(self.request.prompt_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.prompt_len

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.prompt_len:]

    @property
    def num_uncomputed(self) -> int:
        return len(self.token_ids) - self.num_computed_tokens

    @property
    def computes_prompt_logprobs(self) -> bool:
        """Sample 0 of a request that wants prompt logprobs, until it has them all: it computes
        its whole prompt (a prefix-cache hit would skip the logits it needs)."""
        r = self.request
        return self.index == 0 and r.params.prompt_logprobs is not None and len(r.prompt_logprobs) < self.prompt_len - 1

    @property
    def priority_key(self) -> tuple[int, int, int]:
        return (self.request.priority, self.request.arrival_order, self.index)
