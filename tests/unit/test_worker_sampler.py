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
])
def test_bad_sampling_params_name_the_field(kw, field):
    with pytest.raises(InvalidRequestError, match=f"`{field}`"):
        SamplingParams(**kw)


def test_stop_accepts_a_single_string():
    assert SamplingParams(stop="###").stop == ["###"]
    assert SamplingParams(stop=None, stop_token_ids=None).stop == []
