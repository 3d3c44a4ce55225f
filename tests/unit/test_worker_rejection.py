"""Speculative sampling's rejection rule (``fathom.worker.rejection``): what a sequence emits has
exactly the target's distribution at every position (chi-square over many seeds on a tiny vocab),
and greedy sequences emit exactly the target's argmax tokens."""

import pytest
import torch

from fathom.engine.sampling_params import SamplingParams
from fathom.engine.step_input import SamplingSpec
from fathom.worker import rejection
from fathom.worker.sampler import Sampler

V = 6
CHI2_999 = {
    1: 10.83,
    2: 13.82,
    3: 16.27,
    4: 18.47,
    5: 20.52,
}  # chi-square 0.999 quantiles by degrees of freedom
LOGITS = torch.tensor([[1.0, 0.2, -0.5, 0.9, 0.0, -2.0],  # position of draft 1
                       [0.1, 1.5, 0.3, -1.0, 0.7, 0.2],  # draft 2
                       [-0.3, 0.0, 0.4, 0.8, 0.1, 1.2]])  # the bonus position  # fmt: skip


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Thousands of tiny sampling calls: thread start-up would dominate them on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def emitted(params: SamplingParams, drafts: list[int], trials: int) -> list[list[int]]:
    sampler = Sampler()
    out = []
    for seed in range(trials):
        sampler.add(SamplingSpec(seed, params, seed))
    for seed in range(trials):
        res = rejection.verify(sampler, LOGITS, [seed], [drafts])
        assert not res.errors
        out.append([res.token_ids[0]] + [t for t, _, _ in res.extra_tokens[0]])
    return out


def target(params: SamplingParams) -> torch.Tensor:
    probs = torch.softmax(LOGITS / params.temperature, dim=-1)
    if params.top_k > 0:
        cut = probs.topk(params.top_k, dim=-1).values[:, -1:]
        probs = torch.where(probs >= cut, probs, 0.0)
    return probs / probs.sum(-1, keepdim=True)


@pytest.mark.parametrize(
    "params", [SamplingParams(temperature=1.0), SamplingParams(temperature=0.7, top_k=4)]
)
def test_every_position_has_the_target_distribution(params):
    drafts = [3, 1]  # likely but not certain at both positions: accepts and rejects both happen
    runs = emitted(params, drafts, 4000)
    p = target(params)
    for i in range(3):  # position i is emitted when drafts 1 … i were accepted
        reached = [r[i] for r in runs if r[:i] == drafts[:i] and len(r) > i]
        counts = torch.bincount(torch.tensor(reached), minlength=V).float()
        keep = p[i] > 0
        assert counts[~keep].sum() == 0
        expected = p[i][keep] * len(reached)
        chi2 = float(((counts[keep] - expected) ** 2 / expected).sum())
        assert chi2 < CHI2_999[int(keep.sum()) - 1], (i, counts, expected)
    accepted = sum(r[0] == drafts[0] for r in runs) / len(runs)
    assert 0.2 < accepted < 0.8  # both branches exercised


def test_greedy_emits_the_target_argmax_tokens():
    greedy = SamplingParams(temperature=0)
    assert emitted(greedy, [0, 1], 1) == [[0, 1, 5]]  # both accepted, then the bonus
    assert emitted(greedy, [0, 2], 1) == [[0, 1]]  # draft 2 rejected: the target's token instead
    assert emitted(greedy, [4, 1], 1) == [[0]]


def test_logprobs_are_those_of_the_raw_target_distribution():
    sampler = Sampler()
    sampler.add(SamplingSpec(0, SamplingParams(temperature=0, logprobs=2), 0))
    res = rejection.verify(sampler, LOGITS, [0], [[0, 1]])
    raw = torch.log_softmax(LOGITS, dim=-1)
    rows = [(res.token_ids[0], res.logprobs[0], res.top_logprobs[0]), *res.extra_tokens[0]]
    for i, (token, logprob, top) in enumerate(rows):
        assert logprob == pytest.approx(float(raw[i, token]))
        assert [t for t, _ in top] == raw[i].topk(2).indices.tolist()


def test_penalties_see_the_accepted_drafts_as_output():
    """With a large presence penalty a draft equal to the one before it is rejected, as the target
    would never pick it again."""
    sampler = Sampler()
    sampler.add(SamplingSpec(0, SamplingParams(temperature=0, presence_penalty=2.0), 0))
    logits = torch.tensor([[5.0, 0, 0, 0], [5.0, 4.0, 0, 0]])
    res = rejection.verify(sampler, logits, [0], [[0]])
    assert [res.token_ids[0]] + [t for t, _, _ in res.extra_tokens[0]] == [0, 1]


def test_logit_bias_applies_to_every_verified_position():
    """A +100 bias makes token 5 every position's argmax: the drafts [0, 1] are both rejected at
    the first position, which emits 5; without the bias draft 0 (the argmax there) is accepted."""
    assert emitted(SamplingParams(temperature=0), [0, 1], 1) == [[0, 1, 5]]
    assert emitted(SamplingParams(temperature=0, logit_bias={5: 100.0}), [0, 1], 1) == [[5]]
