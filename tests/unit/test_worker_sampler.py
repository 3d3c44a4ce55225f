import itertools
import math

import pytest
import torch

from fathom.engine.errors import InvalidRequestError
from fathom.engine.sampling_params import SamplingParams
from fathom.engine.step_input import SamplingSpec
from fathom.worker.sampler import Sampler


def sampler_with(*specs):
    s = Sampler("cpu")
    for spec in specs:
        s.add(spec)
    return s


def spec(seq_id, seed=0, prompt=None, suppress=(), **kw):
    return SamplingSpec(seq_id, SamplingParams(**kw), seed, prompt, list(suppress))


def test_greedy_is_argmax_and_logprobs_are_raw():
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    s = sampler_with(spec(0, temperature=0), spec(1, temperature=0, logprobs=3), spec(2, temperature=0))
    out = s.sample(logits, [0, 1, 2])
    assert out.token_ids == logits.argmax(-1).tolist()
    ref = torch.log_softmax(logits[1], -1)
    assert out.logprobs[0] is None and out.top_logprobs[2] is None
    assert math.isclose(out.logprobs[1], ref[out.token_ids[1]].item(), rel_tol=1e-6)
    top = out.top_logprobs[1]
    assert [t for t, _ in top] == ref.topk(3).indices.tolist()
    assert all(a[1] >= b[1] for a, b in itertools.pairwise(top))


def test_seeded_sampling_does_not_depend_on_the_batch():
    g = torch.Generator().manual_seed(1)
    rows = [torch.randn(64, generator=g) for _ in range(8)]
    alone = sampler_with(spec(0, seed=123, temperature=0.9, top_p=0.9))
    crowd = sampler_with(*[spec(i, seed=i * 5, temperature=1.0, top_k=10) for i in range(1, 4)],
                         spec(0, seed=123, temperature=0.9, top_p=0.9))
    a, b = [], []
    for r in rows:
        a += alone.sample(r[None], [0]).token_ids
        batch = torch.stack([torch.randn(64, generator=g), r, torch.randn(64, generator=g), r * 2])
        b.append(crowd.sample(batch, [1, 0, 2, 3]).token_ids[1])
    assert a == b


def test_top_k_top_p_min_p_restrict_the_support():
    logits = torch.tensor([[3.0, 2.9, 2.8, -1.0, -2.0]] * 200)
    for params, allowed in [({"top_k": 2}, {0, 1}), ({"top_p": 0.3}, {0}), ({"min_p": 0.5}, {0, 1, 2}),
                            ({"top_k": 1}, {0})]:
        s = sampler_with(*[spec(i, seed=i, temperature=1.0, **params) for i in range(200)])
        got = set(s.sample(logits, list(range(200))).token_ids)
        assert got <= allowed, (params, got)
        assert len(got) == len(allowed), (params, got)


def test_sampling_follows_the_distribution():
    probs = torch.tensor([0.7, 0.2, 0.1])
    logits = probs.log()[None].repeat(3000, 1)
    s = sampler_with(*[spec(i, seed=i, temperature=1.0) for i in range(3000)])
    counts = torch.bincount(torch.tensor(s.sample(logits, list(range(3000))).token_ids), minlength=3) / 3000
    assert torch.allclose(counts, probs, atol=0.04), counts


def test_penalties_and_min_tokens():
    logits = torch.tensor([[2.0, 1.9, 0.0, -1.0]])
    s = sampler_with(spec(0, temperature=0, frequency_penalty=1.0))
    assert s.sample(logits, [0]).token_ids == [0]
    assert s.sample(logits, [0]).token_ids == [1]  # token 0 now penalised by 1.0
    s = sampler_with(spec(0, temperature=0, repetition_penalty=2.0, prompt=[0]))
    assert s.sample(logits, [0]).token_ids == [1]
    s = sampler_with(spec(0, temperature=0, presence_penalty=2.0))
    assert s.sample(logits, [0]).token_ids == [0] and s.sample(logits, [0]).token_ids == [1]
    s = sampler_with(spec(0, temperature=0, min_tokens=2, suppress=[0, 1]))
    assert s.sample(logits, [0]).token_ids == [2]
    assert s.sample(logits, [0]).token_ids == [2]
    assert s.sample(logits, [0]).token_ids == [0]


@pytest.mark.parametrize("kw, field", [
    ({"n": 0}, "n"), ({"temperature": -1}, "temperature"), ({"top_p": 0}, "top_p"),
    ({"top_k": 0}, "top_k"), ({"min_p": 2}, "min_p"), ({"max_tokens": 0}, "max_tokens"),
    ({"stop": [""]}, "stop"), ({"stop_token_ids": [-1]}, "stop_token_ids"),
    ({"presence_penalty": 3}, "presence_penalty"), ({"logprobs": 21}, "logprobs"),
    ({"seed": 1.5}, "seed"), ({"temperature": float("nan")}, "temperature"),
    ({"min_tokens": 5, "max_tokens": 2}, "min_tokens"), ({"repetition_penalty": 0}, "repetition_penalty"),
    ({"logit_bias": {1: 100.5}}, "logit_bias"), ({"logit_bias": {-1: 1.0}}, "logit_bias"),
    ({"logit_bias": {i: 1.0 for i in range(301)}}, "logit_bias"), ({"logit_bias": {1: float("inf")}}, "logit_bias"),
    ({"prompt_logprobs": 21}, "prompt_logprobs"),
])
def test_bad_sampling_params_name_the_field(kw, field):
    with pytest.raises(InvalidRequestError, match=f"`{field}`"):
        SamplingParams(**kw)


def test_stop_accepts_a_single_string():
    assert SamplingParams(stop="###").stop == ["###"]
    assert SamplingParams(stop=None, stop_token_ids=None).stop == []


def test_logit_bias_is_added_per_row_before_sampling_and_the_grammar_mask_wins():
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(3))
    best = logits.argmax(-1).tolist()
    banned = {best[0]: -100.0}
    forced = {7: 100.0, 9: -3.0}
    s = sampler_with(spec(0, temperature=0, logit_bias=banned), spec(1, temperature=0),
                     spec(2, temperature=0, logit_bias=forced, logprobs=1), spec(3, temperature=1.0, logit_bias=forced))
    allowed = torch.ones(4, 50, dtype=torch.bool)
    out = s.sample(logits, [0, 1, 2, 3])
    biased0 = logits[0].clone()
    biased0[best[0]] -= 100.0
    assert out.token_ids == [biased0.argmax().item(), best[1], 7, 7]  # +100 forces 7 even when sampling
    assert out.token_ids[0] != best[0]
    # logprobs stay those of the raw model distribution (as vLLM's default)
    assert math.isclose(out.logprobs[2], torch.log_softmax(logits[2], -1)[7].item(), rel_tol=1e-6)
    allowed[2, 7] = False  # the grammar forbids 7: the +100 bias cannot bring it back
    again = sampler_with(spec(2, temperature=0, logit_bias=forced)).sample(logits[2:3], [2], allowed[2:3])
    masked = logits[2].masked_fill(~allowed[2], float("-inf"))
    masked[9] -= 3.0
    assert again.token_ids == [masked.argmax().item()]


def test_logit_bias_of_a_token_outside_the_logits_fails_that_row_alone():
    logits = torch.randn(2, 50, generator=torch.Generator().manual_seed(4))
    s = sampler_with(spec(0, temperature=0, logit_bias={60: 5.0}), spec(1, temperature=0))
    out = s.sample(logits, [0, 1])
    assert 0 in out.errors and 1 not in out.errors and out.token_ids[1] == logits[1].argmax().item()
