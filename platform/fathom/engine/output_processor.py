"""Appends sampled tokens to sequences, detokenises them incrementally, applies stop
conditions (stop token ids, EOS, stop strings, max_tokens / max_model_len) and cuts deltas."""

import time

from fathom.engine.outputs import CompletionOutput, RequestOutput, TokenLogprob, Usage
from fathom.engine.sequence import Request, Sequence
from fathom.engine.tokenizer import IncrementalDetokenizer, Tokenizer


class OutputProcessor:
    def __init__(self, tokenizer: Tokenizer | None, eos_token_ids: set[int]):
        self.tokenizer = tokenizer
        self.eos_token_ids = eos_token_ids

    def append(self, seq: Sequence, token: int, logprob: float | None,
               top: list[tuple[int, float]] | None) -> None:
        """Add one sampled token; sets seq.finish_reason when a stop condition is met."""
        seq.token_ids.append(token)
        if logprob is not None:
            seq.logprobs.append(TokenLogprob(token, logprob, top or []))
        p = seq.request.params
        may_stop = seq.num_output_tokens >= p.min_tokens  # the sampler masked stops before that
        if may_stop and token in p.stop_token_ids:
            self._finish(seq, "stop", token, add_last=p.include_stop_str_in_output)
        elif may_stop and token in self.eos_token_ids and not p.ignore_eos:
            self._finish(seq, "stop", None, add_last=False)
        else:
            self._detokenize(seq, [token])
            if may_stop and p.stop and self._check_stop_strings(seq):
                return
            if seq.num_output_tokens >= (p.max_tokens or 1 << 62) or len(seq.token_ids) >= seq.request.max_total_tokens:
                self._finish(seq, "length", None, add_last=False)  # already detokenised above

    def _detokenize(self, seq: Sequence, tokens: list[int]) -> None:
        if self.tokenizer is None:
            return
        t0 = time.perf_counter()
        if seq.detokenizer is None:
            seq.detokenizer = IncrementalDetokenizer(self.tokenizer, seq.request.prompt_token_ids,
                                                     seq.request.params.skip_special_tokens)
        seq.text += seq.detokenizer.add(tokens)
        seq.request.metrics.detokenize_time += time.perf_counter() - t0

    def _check_stop_strings(self, seq: Sequence) -> bool:
        p = seq.request.params
        window = max(len(s) for s in p.stop) + 16
        start = max(0, len(seq.text) - window)
        hits = [(seq.text.find(s, start), s) for s in p.stop]
        hits = [(i, s) for i, s in hits if i >= 0]
        if not hits:
            return False
        i, s = min(hits)
        seq.text = seq.text[: i + len(s)] if p.include_stop_str_in_output else seq.text[:i]
        seq.finish_reason, seq.stop_reason = "stop", s
        return True

    def _finish(self, seq: Sequence, reason: str, stop_reason, add_last: bool) -> None:
        if add_last:
            self._detokenize(seq, [seq.token_ids[-1]])
        if seq.detokenizer is not None:
            seq.text += seq.detokenizer.flush()
        seq.finish_reason, seq.stop_reason = reason, stop_reason

    def delta(self, request: Request) -> RequestOutput:
        """What changed since the last call, per sample; advances the sequences' cursors."""
        outputs = []
        for seq in request.seqs:
            end = len(seq.text) if seq.finish_reason else len(seq.text) - _held_back(seq)
            new_tokens = seq.token_ids[seq.prompt_len + seq.sent_tokens:]
            if not new_tokens and end <= seq.sent_text and not (seq.finish_reason and not seq.sent_done):
                continue
            logprobs = None
            if request.params.logprobs is not None:
                logprobs = seq.logprobs[seq.sent_tokens:]
            outputs.append(CompletionOutput(seq.index, new_tokens, seq.text[seq.sent_text:end], logprobs,
                                            seq.finish_reason, seq.stop_reason))
            seq.sent_tokens += len(new_tokens)
            seq.sent_text = max(seq.sent_text, end)
            seq.sent_done = seq.finish_reason is not None
        return RequestOutput(request.request_id, request.prompt_token_ids, outputs, request.finished,
                             usage(request), request.metrics, _take_prompt_logprobs(request))


def usage(request: Request) -> Usage:
    return Usage(len(request.prompt_token_ids), sum(s.num_output_tokens for s in request.seqs),
                 request.num_cached_tokens)


def _take_prompt_logprobs(request: Request) -> list[TokenLogprob | None] | None:
    """The prompt's logprobs the first time they are all there (else None)."""
    n = len(request.prompt_token_ids)
    if request.params.prompt_logprobs is None or request.prompt_logprobs_sent or len(request.prompt_logprobs) < n - 1:
        return None
    request.prompt_logprobs_sent = True
    return [None] + [request.prompt_logprobs[p] for p in range(1, n)]


def _held_back(seq: Sequence) -> int:
    """Length of the longest tail of seq.text that could still grow into a stop string."""
    best = 0
    for s in seq.request.params.stop:
        for k in range(min(len(s) - 1, len(seq.text)), best, -1):
            if seq.text.endswith(s[:k]):
                best = k
                break
    return best
