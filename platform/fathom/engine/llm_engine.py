"""The synchronous engine: `step()` = schedule -> execute -> update.

Owns requests, the scheduler and block manager (plain Python) and an `Executor` that runs
the model (in this process for W=1, Ray rank workers for W>1). Single-threaded by contract:
only `fathom.engine.engine_loop.EngineLoop` calls it, from one thread (of the caller's
process, or of the engine core process)."""

import random
import time
from dataclasses import dataclass, replace

from fathom.engine.block_manager import BlockManager
from fathom.engine.dp_scheduler import DataParallelScheduler
from fathom.engine.errors import InvalidRequestError, PromptTooLongError, RequestFailedError
from fathom.engine.executor import Executor
from fathom.engine.output_processor import OutputProcessor
from fathom.engine.outputs import EngineStats, RequestMetrics, RequestOutput, SpecDecodeStats, TokenLogprob
from fathom.engine.sampling_params import SamplingParams
from fathom.engine.scheduler import Scheduler, SchedulerConfig, SchedulerOutput
from fathom.engine.scheduling_policy import SchedulingPolicy
from fathom.engine.sequence import Request, Sequence, SequenceStatus
from fathom.engine.step_input import DraftPlan, SamplingSpec, StepInput, StepOutput
from fathom.engine.tokenizer import Tokenizer


@dataclass(frozen=True)
class EngineConfig:
    """Hot-path settings (derived from `fathom.api.engine.EngineSettings`)."""

    max_model_len: int
    block_size: int = 16
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 2048
    enable_prefix_caching: bool = True
    enable_chunked_prefill: bool = True
    seed: int = 0
    data_parallel_size: int = 1  # attention groups, each with its own scheduler and KV blocks
    num_speculative_tokens: int = 0  # MTP drafts per decoding sequence and step (0: off)

    def __post_init__(self):
        if not self.enable_chunked_prefill and self.max_num_batched_tokens < self.max_model_len:
            raise ValueError(
                f"max_num_batched_tokens ({self.max_num_batched_tokens}) must be >= max_model_len "
                f"({self.max_model_len}) when enable_chunked_prefill is false")


class LLMEngine:
    def __init__(self, config: EngineConfig, executor: Executor, tokenizer: Tokenizer | None = None,
                 eos_token_ids: set[int] | None = None, policy: SchedulingPolicy | None = None):
        self.config = config
        self.executor = executor
        self.tokenizer = tokenizer
        limits = SchedulerConfig(config.max_num_seqs, config.max_num_batched_tokens, config.enable_chunked_prefill,
                                 config.num_speculative_tokens)
        if config.data_parallel_size > 1:
            self.scheduler = DataParallelScheduler(limits, config.data_parallel_size, executor.num_kv_blocks,
                                                   config.block_size, policy)  # fmt: skip
            self.blocks = self.scheduler.blocks
        else:
            self.blocks = BlockManager(executor.num_kv_blocks, config.block_size)
            self.scheduler = Scheduler(limits, self.blocks, policy)
        self.spec_stats = SpecDecodeStats.empty(config.num_speculative_tokens)
        # a sequence may reserve up to 2k slots past its length (drafts and the MTP's lookahead)
        self._capacity = executor.num_kv_blocks * config.block_size - 2 * config.num_speculative_tokens
        self.outputs = OutputProcessor(tokenizer, set(eos_token_ids or ()))
        self.requests: dict[str, Request] = {}
        self._rng = random.Random(config.seed)
        self._next_seq_id = 0
        self._freed_seq_ids: list[int] = []
        self._spec_sent: set[int] = set()
        self._dirty: dict[str, Request] = {}  # requests with news since the last step()
        self._failures: list[tuple[str, Exception]] = []  # requests failed alone, for the loop to report
        self._moe_tokens: list[int] | None = None  # EPLB's counts, summed over its reports
        self._moe_imbalance: float | None = None

    # ----- requests
    def add_request(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams | None = None,
                    *, priority: int = 0, fairness_key: str | None = None, cache_salt: str | None = None,
                    arrival_time: float | None = None, trace_context: dict[str, str] | None = None) -> Request:
        """Queue a request. Raises InvalidRequestError / PromptTooLongError before queueing."""
        params = params or SamplingParams()
        prompt = self._check_prompt(request_id, prompt_token_ids, params)
        salt = cache_salt if self.config.enable_prefix_caching else f"\0request:{request_id}:{self._next_seq_id}"
        max_total = min(self.config.max_model_len, self._capacity, len(prompt) + (params.max_tokens or 1 << 62))
        req = Request(request_id, prompt, params, RequestMetrics(arrival_time or time.monotonic()),
                      priority=priority, fairness_key=fairness_key, hash_salt=salt, max_total_tokens=max_total,
                      trace_context=trace_context or None)
        for i in range(params.n):
            req.seqs.append(Sequence(self._next_seq_id, req, i, list(prompt)))
            self._next_seq_id += 1
        self.scheduler.add(req.seqs[0])
        req.pending_samples = req.seqs[1:]
        self.requests[request_id] = req
        return req

    def _check_prompt(self, request_id: str, prompt_token_ids, params: SamplingParams) -> list[int]:
        if not isinstance(params, SamplingParams):
            raise InvalidRequestError(f"sampling_params must be a SamplingParams, got {type(params).__name__}")
        if request_id in self.requests:
            raise InvalidRequestError(f"request id {request_id!r} is already in flight")
        prompt = list(prompt_token_ids)
        vocab = self.executor.vocab_size
        if not prompt:
            raise InvalidRequestError("prompt is empty: at least one token is needed")
        if not all(isinstance(t, int) and 0 <= t < vocab for t in prompt):
            raise InvalidRequestError(f"prompt token ids must be integers in [0, {vocab})")
        if params.top_k > vocab:
            raise InvalidRequestError(f"sampling parameter `top_k` must be at most the vocabulary size {vocab}, "
                                      f"got {params.top_k}")
        if any(t >= vocab for t in params.stop_token_ids):
            raise InvalidRequestError(f"stop_token_ids must be token ids in [0, {vocab})")
        bad = next((t for t in params.logit_bias or () if t >= vocab), None)
        if bad is not None:
            raise InvalidRequestError(f"logit_bias: token id {bad} is outside the vocabulary [0, {vocab})")
        if len(prompt) >= self.config.max_model_len:
            raise PromptTooLongError(
                f"prompt has {len(prompt)} tokens but max_model_len is {self.config.max_model_len} "
                "(at least one token must be left to generate)")
        if len(prompt) >= self._capacity:
            raise PromptTooLongError(
                f"prompt has {len(prompt)} tokens but the KV cache holds only {self._capacity}")
        if self.config.num_speculative_tokens and params.structured is not None:
            raise InvalidRequestError("structured outputs (response_format, forced or strict tool calls) are not supported "
                                      "with speculative decoding on this server")
        return prompt

    def abort_request(self, request_id: str) -> None:
        """Finish every sample of the request with finish_reason 'abort' and free its blocks now."""
        req = self.requests.get(request_id)
        if req is None:
            return
        self._abort_seqs(req)
        self._dirty[request_id] = req

    def _abort_seqs(self, req: Request) -> None:
        """Finish the request's unfinished samples with finish_reason 'abort', freeing their blocks."""
        for seq in req.seqs:
            if seq.status is not SequenceStatus.FINISHED:
                seq.finish_reason = seq.finish_reason or "abort"
                self._finish(seq)

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests)

    # ----- the step
    def step(self) -> list[RequestOutput]:
        """Run one engine step; return a delta for every request that made progress."""
        batch = self.scheduler.schedule()
        if batch.chunks:
            step = self._step_input(batch)
            result = self.executor.execute(step)
            self._update(batch, result)
            self._store_prompt_logprobs(batch, step, result)
            if result.moe_expert_tokens is not None:
                self._note_moe_load(result)
        return self._collect()

    def _step_input(self, batch: SchedulerOutput) -> StepInput:
        step = StepInput([], [], [], [], [], [], freed_seq_ids=self._freed_seq_ids)
        if self.config.num_speculative_tokens:
            step.drafts = DraftPlan([], [], [])
        self._freed_seq_ids = []
        now = time.monotonic()
        for row, chunk in enumerate(batch.chunks):
            seq = chunk.seq
            step.seq_ids.append(seq.seq_id)
            step.token_ids += seq.token_ids[chunk.start:chunk.start + chunk.num_tokens - chunk.num_drafts]
            step.token_ids += seq.draft_token_ids[:chunk.num_drafts]
            if step.drafts is not None:
                self._plan_drafts(step.drafts, chunk)
            step.starts.append(chunk.start)
            step.query_lens.append(chunk.num_tokens)
            step.block_tables.append(seq.block_table)
            if seq.request.metrics.first_scheduled_time is None:
                seq.request.metrics.first_scheduled_time = now
            if seq.request.trace_context is not None:
                _note_for_tracing(step, chunk, now)
            targets = _prompt_targets(chunk)
            if targets:
                step.prompt_logprobs.append((row, targets, seq.request.params.prompt_logprobs))
            if chunk.samples:
                step.sample_rows.append(row)
                if seq.seq_id not in self._spec_sent:
                    step.new_specs.append(self._spec(seq))
                    self._spec_sent.add(seq.seq_id)
        if self.config.data_parallel_size > 1:
            step.groups = self.scheduler.groups_of(batch.chunks)
        return step

    def _plan_drafts(self, plan: DraftPlan, chunk) -> None:
        """The chunk's drafts (already in the step's tokens after its own) and what its MTP needs."""
        seq = chunk.seq
        plan.num_drafts.append(chunk.num_drafts)
        plan.num_proposals.append(self.config.num_speculative_tokens if chunk.samples else 0)
        end = chunk.start + chunk.num_tokens
        plan.next_token_ids.append(-1 if chunk.samples else seq.token_ids[end])

    def _spec(self, seq: Sequence) -> SamplingSpec:
        p = seq.request.params
        seed = self._rng.getrandbits(63) if p.seed is None else (p.seed * 1_000_003 + seq.index) % (1 << 63)
        suppress = sorted(set(p.stop_token_ids) | (set() if p.ignore_eos else self.outputs.eos_token_ids))
        prompt = seq.request.prompt_token_ids if p.repetition_penalty != 1.0 else None
        return SamplingSpec(seq.seq_id, p, seed, prompt, suppress if p.min_tokens else [])

    def _update(self, batch: SchedulerOutput, result: StepOutput) -> None:
        sampled = iter(range(len(result.token_ids)))
        now = time.monotonic()
        failed: dict[str, tuple[Request, Exception]] = {}
        for chunk in batch.chunks:
            seq, req = chunk.seq, chunk.seq.request
            j = next(sampled) if chunk.samples else None
            tokens = _emitted(result, j) if j is not None and j not in result.errors else []
            self.scheduler.on_computed(chunk, [t for t, _, _ in tokens[:-1]])
            if req.pending_samples and seq.num_computed_tokens >= seq.prompt_len:
                for child in req.pending_samples:
                    self.scheduler.add(child)
                req.pending_samples = []
            if j is None or req.request_id in failed:
                continue
            if j in result.errors:
                failed[req.request_id] = (req, RequestFailedError(result.errors[j]))
                continue
            if chunk.num_drafts:
                self.spec_stats.record(chunk.num_drafts, len(tokens) - 1, req.metrics)
            try:
                for token, logprob, top in tokens:  # emitted tokens past a stop are dropped (never charged)
                    self.outputs.append(seq, token, logprob, top)
                    if seq.finish_reason is not None:
                        break
            except Exception as e:  # noqa: BLE001 - detokenising / stop checks: this request alone
                failed[req.request_id] = (req, RequestFailedError(f"output processing failed: {e!r}"[:500]))
                continue
            req.metrics.first_token_time = req.metrics.first_token_time or now
            self._dirty[req.request_id] = req
            if seq.finish_reason is not None:
                self._finish(seq)
            elif result.draft_token_ids:
                seq.draft_token_ids = result.draft_token_ids[j]
        for req, error in failed.values():
            self.fail_request(req.request_id, error)

    def _store_prompt_logprobs(self, batch: SchedulerOutput, step: StepInput, result: StepOutput) -> None:
        """File the step's prompt logprobs by position (a recomputed chunk overwrites the same
        values); the output processor hands them out once the prompt is complete."""
        for (row, targets, _), values in zip(step.prompt_logprobs, result.prompt_logprobs):
            chunk = batch.chunks[row]
            req = chunk.seq.request
            for t, (target, (logprob, top)) in enumerate(zip(targets, values)):
                req.prompt_logprobs[chunk.start + 1 + t] = TokenLogprob(target, logprob, top)

    def _note_moe_load(self, result: StepOutput) -> None:
        old = self._moe_tokens or [0] * len(result.moe_expert_tokens)
        self._moe_tokens = [a + b for a, b in zip(old, result.moe_expert_tokens, strict=True)]
        self._moe_imbalance = result.moe_imbalance

    def fail_request(self, request_id: str, error: Exception) -> None:
        """End one request with `error` (reported by `take_failures`): its blocks are freed now,
        its sampler state with the next step; nothing else is touched."""
        req = self.requests.pop(request_id, None)
        if req is None:
            return
        self._abort_seqs(req)
        self._dirty.pop(request_id, None)
        self._failures.append((request_id, error))

    def fail_in_flight(self, error: Exception) -> None:
        """A step failed and no single request could be blamed (not the executor: that one is
        fatal): fail every in-flight request with `error`, keep the instance serving."""
        for request_id in list(self.requests):
            self.fail_request(request_id, error)

    def take_failures(self) -> list[tuple[str, Exception]]:
        """Requests failed alone since the last call: (request_id, error)."""
        out, self._failures = self._failures, []
        return out

    def _finish(self, seq: Sequence) -> None:
        self.scheduler.finish(seq)
        if seq in seq.request.pending_samples:
            seq.request.pending_samples.remove(seq)
        if seq.seq_id in self._spec_sent:
            self._spec_sent.discard(seq.seq_id)
            self._freed_seq_ids.append(seq.seq_id)

    def _collect(self) -> list[RequestOutput]:
        outs = []
        for req in list(self._dirty.values()):
            try:
                out = self.outputs.delta(req)
            except Exception as e:  # noqa: BLE001 - this request's detokenised text: it fails alone
                self.fail_request(req.request_id, RequestFailedError(f"output processing failed: {e!r}"[:500]))
                continue
            if req.finished:
                req.metrics.finished_time = time.monotonic()
                self.requests.pop(req.request_id, None)
            if out.outputs or out.finished:
                outs.append(out)
        self._dirty = {}
        return outs

    def fail_all(self) -> list[Request]:
        """Drop every request (the executor died); returns them for the caller to notify."""
        reqs = list(self.requests.values())
        for req in reqs:
            for seq in req.seqs:
                if seq.status is not SequenceStatus.FINISHED:
                    self.scheduler.finish(seq)
        self.requests.clear()
        return reqs

    def stats(self) -> EngineStats:
        s = self.scheduler
        return EngineStats(len(s.running), len(s.waiting) + sum(len(r.pending_samples) for r in self.requests.values()),
                           self.blocks.num_used, self.blocks.num_blocks * self.config.data_parallel_size,
                           s.prefix_stats.queried_tokens, s.prefix_stats.hit_tokens, s.num_preemptions,
                           moe_expert_tokens=self._moe_tokens, moe_imbalance=self._moe_imbalance,
                           spec_decode=replace(self.spec_stats, accepted_per_position=list(
                               self.spec_stats.accepted_per_position)) if self.config.num_speculative_tokens else None)


def _prompt_targets(chunk) -> list[int]:
    """Prompt tokens whose logprobs this chunk's logits give: the logits at position p score
    the token at p + 1, for the prompt positions 1 .. len - 1 of a sequence that wants them."""
    seq = chunk.seq
    if not seq.computes_prompt_logprobs:
        return []
    return seq.token_ids[chunk.start + 1:min(chunk.start + chunk.num_tokens + 1, seq.prompt_len)]


def _emitted(result: StepOutput, j: int) -> list[tuple[int, float | None, list[tuple[int, float]] | None]]:
    """(token, logprob, top_logprobs) of every token sample row j emitted, in order."""
    first = (result.token_ids[j], result.logprobs[j], result.top_logprobs[j])
    return [first, *result.extra_tokens[j]] if result.extra_tokens else [first]


def _note_for_tracing(step: StepInput, chunk, now: float) -> None:
    """Traced requests only: prefill chunks become span events, and the step links to the request."""
    req = chunk.seq.request
    if chunk.start < chunk.seq.prompt_len:
        req.metrics.prefill_chunks.append((now, chunk.num_tokens))
    if not any(c is req.trace_context for c in step.trace_contexts):  # n samples: one link
        step.trace_contexts.append(req.trace_context)
