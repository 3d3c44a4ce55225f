"""Verifies a sequence's drafts against the target's logits so that what it emits has exactly the
target's distribution (speculative sampling, Leviathan et al. 2023 / Chen et al. 2023; vLLM's
``rejection_sampler``).

The MTP drafts are greedy (the argmax of the draft logits), so the draft distribution q is one-hot
on the draft token d: draft i is accepted with probability min(1, p_i(d) / q(d)) = p_i(d), where
p_i is the distribution the sequence samples from at that position (logit_bias, penalties, temperature,
top-k/top-p/min-p, with the accepted drafts before it counted as output). At the first rejection
the token is drawn from the residual max(p_i - q, 0) ∝ p_i with d removed; after k acceptances
a bonus token is drawn from p_k. Marginally every emitted token is distributed as p: sampled
outputs have the target's distribution, and greedy outputs are exactly the target's tokens
(a draft is accepted iff it is the argmax). Randomness comes from the sequence's own generator.
"""

import torch

from fathom.engine.step_input import StepOutput
from fathom.worker.sampler import Sampler, SeqSamplingState, apply_logit_bias, race


def verify(sampler: Sampler, logits: torch.Tensor, seq_ids: list[int], drafts: list[list[int]]) -> StepOutput:
    """logits: float32 [sum over j of len(drafts[j]) + 1, V], sequence j's rows back to back (its
    positions in order, the bonus position last). Emits per sequence its accepted drafts and one
    sampled token; a sequence that cannot be sampled comes back in ``errors`` (token -1)."""
    n = len(seq_ids)
    out = StepOutput([-1] * n, [None] * n, [None] * n, extra_tokens=[[] for _ in range(n)])
    offset = 0
    for j, (seq_id, d) in enumerate(zip(seq_ids, drafts, strict=True)):
        rows = logits[offset : offset + len(d) + 1]
        offset += len(d) + 1
        if seq_id in sampler.bad or seq_id not in sampler.states:
            out.errors[j] = sampler.bad.get(seq_id, f"no sampling spec for sequence {seq_id}")
            continue
        st = sampler.states[seq_id]
        try:
            tokens = _verify_one(sampler, st, rows, d)
            emitted = _with_logprobs(rows, tokens, st.spec.params.logprobs)
        except Exception as e:  # noqa: BLE001 - this sequence's request fails, alone
            out.errors[j] = f"sampling failed: {type(e).__name__}: {e}"[:500]
            continue
        st.output_ids += tokens
        (out.token_ids[j], out.logprobs[j], out.top_logprobs[j]), *out.extra_tokens[j] = emitted
    return out


def _verify_one(sampler: Sampler, st: SeqSamplingState, rows: torch.Tensor, drafts: list[int]) -> list[int]:
    """The tokens one sequence emits: its accepted drafts, then one sampled token."""
    k = len(drafts)
    histories = [st.output_ids + drafts[:i] for i in range(k + 1)]
    z = sampler.apply_penalties(apply_logit_bias(rows, [st] * (k + 1)), [st] * (k + 1), histories)
    if st.spec.params.greedy:
        target = z.argmax(dim=-1).tolist()
        a = 0
        while a < k and drafts[a] == target[a]:
            a += 1
        return drafts[:a] + [target[a]]
    probs = Sampler.probs(z, [st] * (k + 1))
    for i, d in enumerate(drafts):
        u = torch.rand((), generator=st.generator, device=probs.device, dtype=probs.dtype)
        accept = u * probs[i].sum() < probs[i, d]  # probs may be unnormalised (min-p): compare to the mass
        if not accept:
            residual = probs[i].clone()
            residual[d] = 0.0
            return drafts[:i] + [int(race(residual, st.generator))]
    return drafts + [int(race(probs[k], st.generator))]


def _with_logprobs(rows: torch.Tensor, tokens: list[int], k: int | None):
    """(token, logprob, top_logprobs) per emitted token; logprobs of the raw distribution."""
    if k is None:
        return [(t, None, None) for t in tokens]
    raw = torch.log_softmax(rows[: len(tokens)], dim=-1)
    chosen = raw.gather(1, torch.tensor(tokens, device=raw.device)[:, None])[:, 0].tolist()
    top_vals, top_ids = raw.topk(k, dim=-1) if k else (raw[:, :0], raw[:, :0].long())
    return [
        (t, lp, list(zip(ids, vals)))
        for t, lp, ids, vals in zip(tokens, chosen, top_ids.tolist(), top_vals.tolist(), strict=True)
    ]
