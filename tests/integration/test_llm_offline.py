"""`fathom.LLM` (W=1) on the built-in demo checkpoint: text in, text out, logprobs, n samples,
chat template, clear errors."""

import pytest
import torch

import fathom
from fathom.engine.errors import PromptTooLongError


@pytest.fixture(scope="module")
def llm():
    torch.set_num_threads(2)
    return fathom.LLM(kv_cache_memory=4 << 20, max_model_len=256)


def test_text_and_token_prompts(llm):
    params = fathom.SamplingParams(temperature=0, max_tokens=8, ignore_eos=True, logprobs=2)
    ids = llm.tokenizer.encode("the cat")
    a, b, c = llm.generate(["the cat", ids, [5, 6, 7]], params)
    assert a.prompt_token_ids == ids and a.outputs[0].token_ids == b.outputs[0].token_ids
    out = a.outputs[0]
    assert len(out.token_ids) == 8 and out.finish_reason == "length"
    assert out.text == llm.tokenizer.decode(out.token_ids)
    assert len(out.logprobs) == 8 and all(len(lp.top_logprobs) == 2 for lp in out.logprobs)
    assert all(lp.logprob <= 0 and lp.top_logprobs[0][1] >= lp.logprob for lp in out.logprobs)
    assert c.usage.prompt_tokens == 3 and c.usage.completion_tokens == 8


def test_n_seeded_samples_and_repeatability(llm):
    params = fathom.SamplingParams(n=3, temperature=1.0, seed=11, max_tokens=10, ignore_eos=True)
    first = llm.generate("once upon a time", params)[0]
    again = llm.generate("once upon a time", params)[0]
    assert [o.index for o in first.outputs] == [0, 1, 2]
    assert len({tuple(o.token_ids) for o in first.outputs}) > 1
    assert [o.token_ids for o in first.outputs] == [o.token_ids for o in again.outputs]
    assert again.usage.cached_tokens > 0 or len(again.prompt_token_ids) <= 16  # prefix cache reused


def test_chat_template_matches_transformers(llm):
    from transformers import AutoTokenizer

    from fathom.api.engine import EngineSettings
    from fathom.worker.factory import resolve_model_dir

    hf = AutoTokenizer.from_pretrained(str(resolve_model_dir(EngineSettings())))
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
    ours = llm.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    assert ours == hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert llm.tokenizer.encode(ours, add_special_tokens=False) == hf.encode(ours, add_special_tokens=False)
    out = llm.chat(messages, fathom.SamplingParams(temperature=0, max_tokens=4, ignore_eos=True))[0]
    assert out.prompt_token_ids == hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                          return_dict=True)["input_ids"]
    assert len(out.outputs[0].token_ids) == 4


def test_errors_are_clear(llm):
    with pytest.raises(PromptTooLongError, match="max_model_len is 256"):
        llm.generate([[1] * 300])
    with pytest.raises(ValueError, match="expert_parallel_size"):
        fathom.LLM(tensor_parallel_size=3, expert_parallel_size=2)
    with pytest.raises(ValueError, match="2 sampling_params for 1 prompts"):
        llm.generate(["a"], [fathom.SamplingParams(), fathom.SamplingParams()])


def test_prompt_logprobs_and_logit_bias_through_fathom_llm(llm):
    ids = llm.tokenizer.encode("the cat sat")
    out = llm.generate([ids], fathom.SamplingParams(temperature=0, max_tokens=3, ignore_eos=True, prompt_logprobs=2,
                                                    logit_bias={65: 100.0}))[0]
    assert out.outputs[0].token_ids == [65, 65, 65]
    assert len(out.prompt_logprobs) == len(ids) and out.prompt_logprobs[0] is None
    assert [lp.token_id for lp in out.prompt_logprobs[1:]] == ids[1:]
    assert all(lp.logprob <= 0 and len(lp.top_logprobs) == 2 for lp in out.prompt_logprobs[1:])
    assert llm.generate([ids], fathom.SamplingParams(max_tokens=1))[0].prompt_logprobs is None
