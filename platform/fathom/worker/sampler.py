"""Turns the last-token logits of a batch into tokens, one torch.Generator per sequence.

Rows are processed independently (logit bias, grammar mask, penalties, temperature, top-k /
top-p / min-p, in that order), and each
random row draws its noise from its own generator (Gumbel-max via exponential race: argmax
p / q with q ~ Exp(1)), so a seeded sequence samples the same tokens whatever else is in
the batch. Logprobs are of the raw model distribution (as vLLM returns them by default).

A row whose sampling raises (its spec, not the forward, is at fault) fails alone: the batch
is retried row by row and the failing rows come back in `StepOutput.errors` (token -1), so
one request's data can never fail the step of every other request.
"""

from dataclasses import dataclass, field

import torch

from fathom.engine.step_input import SamplingSpec, StepOutput


@dataclass
class SeqSamplingState:
    spec: SamplingSpec
    generator: torch.Generator
    output_ids: list[int] = field(default_factory=list)
    bias_ids: torch.Tensor | None = None  # logit_bias as (token ids, biases) on the device
    bias_values: torch.Tensor | None = None


class Sampler:
    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.states: dict[int, SeqSamplingState] = {}
        self.bad: dict[int, str] = {}  # seq_id -> why its spec cannot be sampled

    def add(self, spec: SamplingSpec) -> None:
        gen = torch.Generator(device=self.device)
        try:
            gen.manual_seed(spec.seed)
        except (RuntimeError, OverflowError, TypeError):  # the row fails when sampled
            gen.manual_seed(0)
            self.bad[spec.seq_id] = f"bad sampling seed {spec.seed!r}"
        st = self.states[spec.seq_id] = SeqSamplingState(spec, gen)
        if spec.params.logit_bias:
            st.bias_ids = torch.tensor(list(spec.params.logit_bias), dtype=torch.long, device=self.device)
            st.bias_values = torch.tensor(list(spec.params.logit_bias.values()), dtype=torch.float32,
                                          device=self.device)

    def free(self, seq_id: int) -> None:
        self.states.pop(seq_id, None)
        self.bad.pop(seq_id, None)

    def sample(self, logits: torch.Tensor, seq_ids: list[int], allowed: torch.Tensor | None = None) -> StepOutput:
        """logits: float32 [B, V], row j belongs to seq_ids[j]; `allowed` [B, V] bool (structured
        outputs' grammar mask): tokens it rules out are never sampled. Rows that cannot be sampled
        come back in `errors` (the others are sampled as if those rows were not in the batch)."""
        errors = {j: self.bad[s] for j, s in enumerate(seq_ids) if s in self.bad}
        errors.update({j: f"no sampling spec for sequence {s}" for j, s in enumerate(seq_ids)
                       if s not in self.states})
        if errors:
            return self._sample_rows(logits, seq_ids, errors, allowed)
        try:
            return self._sample_batch(logits, seq_ids, allowed)
        except Exception:  # noqa: BLE001 - find the row(s) at fault, sample the rest
            return self._sample_rows(logits, seq_ids, errors, allowed)

    def _sample_rows(self, logits: torch.Tensor, seq_ids: list[int], errors: dict[int, str],
                     allowed: torch.Tensor | None) -> StepOutput:
        out = StepOutput([-1] * len(seq_ids), [None] * len(seq_ids), [None] * len(seq_ids), dict(errors))
        for j, seq_id in enumerate(seq_ids):
            if j in errors:
                continue
            try:
                one = self._sample_batch(logits[j:j + 1], [seq_id], None if allowed is None else allowed[j:j + 1])
            except Exception as e:  # noqa: BLE001 - this row's request fails, alone
                out.errors[j] = f"sampling failed: {type(e).__name__}: {e}"[:500]
                continue
            out.token_ids[j], out.logprobs[j], out.top_logprobs[j] = one.token_ids[0], one.logprobs[0], \
                one.top_logprobs[0]
        return out

    def _sample_batch(self, logits: torch.Tensor, seq_ids: list[int], allowed: torch.Tensor | None) -> StepOutput:
        states = [self.states[s] for s in seq_ids]
        raw_logprobs = None
        if any(st.spec.params.logprobs is not None for st in states):
            raw_logprobs = torch.log_softmax(logits, dim=-1)
        logits = apply_logit_bias(logits, states)
        if allowed is not None:  # after the bias: a token the grammar forbids stays forbidden
            logits = logits.masked_fill(~allowed, float("-inf"))
        logits = self.apply_penalties(logits, states)
        tokens = torch.empty(len(states), dtype=torch.long, device=logits.device)
        greedy = [j for j, st in enumerate(states) if st.spec.params.greedy]
        random = [j for j, st in enumerate(states) if not st.spec.params.greedy]
        if greedy:
            tokens[greedy] = logits[greedy].argmax(dim=-1)
        if random:
            tokens[random] = self._sample_random(logits[random], [states[j] for j in random])
        token_list = tokens.tolist()
        out = self._with_logprobs(token_list, raw_logprobs, states)
        for st, t in zip(states, token_list):  # only once the whole batch has succeeded
            st.output_ids.append(t)
        return out

    def apply_penalties(self, logits: torch.Tensor, states: list[SeqSamplingState],
                         histories: list[list[int]] | None = None) -> torch.Tensor:
        """Penalties and min_tokens' stop suppression; row j's output so far is ``histories[j]``
        (default: its sequence's sampled tokens; speculative decoding adds the drafts before it)."""
        histories = histories or [st.output_ids for st in states]
        rows = [j for j, st in enumerate(states) if st.spec.params.has_penalties
                or len(histories[j]) < st.spec.params.min_tokens]
        if not rows:
            return logits
        logits = logits.clone()
        vocab = logits.shape[-1]
        for j in rows:
            st, p, row, history = states[j], states[j].spec.params, logits[j], histories[j]
            out = torch.tensor(history, dtype=torch.long, device=logits.device)
            if p.repetition_penalty != 1.0:
                seen = torch.tensor(st.spec.prompt_token_ids or [], dtype=torch.long, device=logits.device)
                seen = torch.cat([seen, out]).unique()
                vals = row[seen]
                row[seen] = torch.where(vals > 0, vals / p.repetition_penalty, vals * p.repetition_penalty)
            if (p.presence_penalty or p.frequency_penalty) and len(out):
                counts = torch.bincount(out, minlength=vocab)[:vocab].to(row.dtype)
                row -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0).to(row.dtype)
            if len(history) < p.min_tokens and st.spec.min_tokens_suppress:
                row[st.spec.min_tokens_suppress] = float("-inf")
        return logits

    def _sample_random(self, logits: torch.Tensor, states: list[SeqSamplingState]) -> torch.Tensor:
        """logits [R, V] -> tokens [R]."""
        probs = self.probs(logits, states)
        return torch.stack([race(row, st.generator) for row, st in zip(probs, states)])

    @staticmethod
    def probs(logits: torch.Tensor, states: list[SeqSamplingState]) -> torch.Tensor:
        """The distribution random sampling draws from: logits [R, V] (penalties applied) after
        temperature, top-k / top-p and min-p -> probabilities [R, V] (unnormalised where min-p cut)."""
        params = [st.spec.params for st in states]
        temp = torch.tensor([p.temperature for p in params], device=logits.device, dtype=logits.dtype)
        logits = logits / temp[:, None]
        if any(p.top_k > 0 or p.top_p < 1.0 for p in params):
            logits = _top_k_top_p(logits, params)
        probs = torch.softmax(logits, dim=-1)
        if any(p.min_p > 0 for p in params):
            min_p = torch.tensor([p.min_p for p in params], device=probs.device, dtype=probs.dtype)
            probs = probs.masked_fill(probs < min_p[:, None] * probs.amax(-1, keepdim=True), 0.0)
        return probs

    @staticmethod
    def _with_logprobs(tokens: list[int], raw: torch.Tensor | None, states) -> StepOutput:
        n = len(tokens)
        logprobs: list[float | None] = [None] * n
        tops: list[list[tuple[int, float]] | None] = [None] * n
        if raw is None:
            return StepOutput(tokens, logprobs, tops)
        want = [j for j, st in enumerate(states) if st.spec.params.logprobs is not None]
        k = max(states[j].spec.params.logprobs for j in want)
        rows = raw[want]
        chosen = rows.gather(1, torch.tensor([[tokens[j]] for j in want], device=rows.device))[:, 0].tolist()
        top_vals, top_ids = rows.topk(k, dim=-1) if k else (rows[:, :0], rows[:, :0].long())
        top_vals, top_ids = top_vals.tolist(), top_ids.tolist()
        for r, j in enumerate(want):
            kj = states[j].spec.params.logprobs
            logprobs[j] = chosen[r]
            tops[j] = list(zip(top_ids[r][:kj], top_vals[r][:kj]))
        return StepOutput(tokens, logprobs, tops)


def apply_logit_bias(logits: torch.Tensor, states: list[SeqSamplingState]) -> torch.Tensor:
    """Add each row's `logit_bias` (one scatter over the whole batch; rows without one untouched)."""
    rows = [j for j, st in enumerate(states) if st.bias_ids is not None]
    if not rows:
        return logits
    index = torch.cat([torch.full_like(states[j].bias_ids, j) for j in rows])
    ids = torch.cat([states[j].bias_ids for j in rows])
    values = torch.cat([states[j].bias_values for j in rows]).to(logits.dtype)
    return logits.index_put((index, ids), values, accumulate=True)


def _top_k_top_p(logits: torch.Tensor, params) -> torch.Tensor:
    """Mask logits outside each row's top-k and top-p nucleus (always keeps the best token)."""
    vocab = logits.shape[-1]
    k = torch.tensor([min(p.top_k, vocab) if p.top_k > 0 else vocab for p in params], device=logits.device)
    top_p = torch.tensor([p.top_p for p in params], device=logits.device, dtype=logits.dtype)
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    ranks = torch.arange(vocab, device=logits.device)[None, :]
    drop = ranks >= k[:, None]
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    cum = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
    drop = (cum - torch.softmax(sorted_logits, dim=-1)) >= top_p[:, None]  # mass before this token
    drop[:, 0] = False
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(1, order, sorted_logits)


def race(weights: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One token drawn with probability proportional to ``weights`` [V] (>= 0, not all 0), by an
    exponential race: argmax weights / q with q ~ Exp(1), the noise from ``generator``."""
    noise = torch.empty_like(weights).exponential_(generator=generator)
    return (weights / noise).argmax()
