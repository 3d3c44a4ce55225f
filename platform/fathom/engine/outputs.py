"""What the engine hands back: per-request deltas (streaming) or whole results (`fathom.LLM`).

See docs/architecture.md ("Engine outputs and errors") for the contract."""

from dataclasses import dataclass, field
from typing import Literal

FinishReason = Literal["stop", "length", "abort"]


@dataclass
class TokenLogprob:
    """Logprob of one token and of the `logprobs` most likely tokens (best first); an echoed
    prompt's first token has logprob None."""

    token_id: int
    logprob: float | None
    top_logprobs: list[tuple[int, float]] = field(default_factory=list)


@dataclass
class CompletionOutput:
    """One sample (choice) of a request: the new tokens/text of this delta, or all of them."""

    index: int
    token_ids: list[int]
    text: str
    logprobs: list[TokenLogprob] | None = None
    finish_reason: FinishReason | None = None
    stop_reason: str | int | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class Usage:
    """Cumulative token counts (OpenAI `usage`; cached_tokens = prompt_tokens_details.cached_tokens)."""

    prompt_tokens: int
    completion_tokens: int = 0
    cached_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class RequestMetrics:
    """time.monotonic() stamps of a request's life (None until they happen)."""

    arrival_time: float
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    finished_time: float | None = None
    prefill_chunks: list[tuple[float, int]] = field(default_factory=list)  # (stamp, tokens), for tracing
    detokenize_time: float = 0.0  # seconds spent detokenising this request's samples
    spec_draft_tokens: int = 0  # speculative decoding: drafts verified for this request's samples
    spec_accepted_tokens: int = 0  # ... and accepted


@dataclass
class RequestOutput:
    """Progress of one request in one engine step: `outputs` holds only samples with news."""

    request_id: str
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    usage: Usage
    metrics: RequestMetrics
    # SamplingParams.prompt_logprobs: one entry per prompt token, None for the first (nothing
    # predicts it); sent once, with the first delta after the whole prompt is computed
    prompt_logprobs: list[TokenLogprob | None] | None = None


@dataclass
class SpecDecodeStats:
    """Speculative decoding's cumulative counters (vLLM's spec_decode metrics): `num_drafts`
    verifications of a sequence's drafts, `num_draft_tokens` drafts verified, `num_accepted_tokens`
    accepted, `accepted_per_position[i]` verifications whose draft i + 1 was accepted (its
    acceptance rate is that over `num_drafts`)."""

    num_drafts: int = 0
    num_draft_tokens: int = 0
    num_accepted_tokens: int = 0
    accepted_per_position: list[int] = field(default_factory=list)

    @classmethod
    def empty(cls, num_speculative_tokens: int) -> "SpecDecodeStats":
        return cls(accepted_per_position=[0] * num_speculative_tokens)

    def record(self, drafts: int, accepted: int, metrics: RequestMetrics) -> None:
        """One sequence's drafts verified: `accepted` of `drafts` (a prefix of them) accepted."""
        self.num_drafts += 1
        self.num_draft_tokens += drafts
        self.num_accepted_tokens += accepted
        for i in range(accepted):
            self.accepted_per_position[i] += 1
        metrics.spec_draft_tokens += drafts
        metrics.spec_accepted_tokens += accepted


@dataclass
class EngineStats:
    """A snapshot for /metrics and the autoscaler (counters are cumulative)."""

    num_running: int
    num_waiting: int
    kv_blocks_used: int
    kv_blocks_total: int
    prefix_cache_queried_tokens: int
    prefix_cache_hit_tokens: int
    num_preemptions: int
    healthy: bool = True
    moe_expert_tokens: list[int] | None = None  # EPLB: routed pairs per expert, cumulative (W > 1)
    moe_imbalance: float | None = None  # EPLB: the last window's worst max / mean tokens per shard
    spec_decode: SpecDecodeStats | None = None  # None: speculative decoding is off

    @property
    def kv_cache_usage(self) -> float:
        return self.kv_blocks_used / self.kv_blocks_total if self.kv_blocks_total else 0.0
