"""Offline batch inference, as vLLM users know it:

    llm = fathom.LLM(model="path/to/checkpoint", tensor_parallel_size=2, expert_parallel_size=2)
    outputs = llm.generate(["Hello", "The capital of"], fathom.SamplingParams(max_tokens=32))
    outputs[0].outputs[0].text

It drives the same `LLMEngine` (continuous batching, prefix caching, chunked prefill) and, for
tensor_parallel_size > 1, the same Ray rank workers as `fathom serve`."""

from fathom.api.engine import EngineSettings
from fathom.engine.outputs import CompletionOutput, RequestOutput
from fathom.engine.sampling_params import SamplingParams
from fathom.worker.factory import create_engine


class LLM:
    def __init__(self, model: str | None = None, *, tensor_parallel_size: int = 1, expert_parallel_size: int = 1,
                 dtype: str = "auto", **engine_settings):
        """`model` is a checkpoint directory (None: the built-in demo model); other keyword
        arguments are `fathom.api.engine.EngineSettings` fields (max_model_len, block_size,
        kv_cache_memory, enable_prefix_caching, ...)."""
        settings = EngineSettings(model=model, tensor_parallel_size=tensor_parallel_size,
                                  expert_parallel_size=expert_parallel_size, dtype=dtype, **engine_settings)
        self.engine = create_engine(settings)
        self.tokenizer = self.engine.tokenizer
        self._counter = 0

    def generate(self, prompts, sampling_params: SamplingParams | list[SamplingParams] | None = None,
                 ) -> list[RequestOutput]:
        """Run prompts (a string, a list of strings, a list of token ids, or a list of those)
        to completion; one RequestOutput per prompt, in order, with whole texts and tokens."""
        prompt_ids = self._token_ids(prompts)
        params = sampling_params if isinstance(sampling_params, list) else [sampling_params or SamplingParams()] * len(prompt_ids)
        if len(params) != len(prompt_ids):
            raise ValueError(f"got {len(params)} sampling_params for {len(prompt_ids)} prompts")
        ids = []
        for p, sp in zip(prompt_ids, params):
            ids.append(f"llm-{self._counter}")
            self._counter += 1
            self.engine.add_request(ids[-1], p, sp)
        merged: dict[str, RequestOutput] = {}
        while self.engine.has_unfinished_requests():
            for out in self.engine.step():
                _merge(merged, out)
        return [merged[i] for i in ids]

    def chat(self, messages: list[dict] | list[list[dict]],
             sampling_params: SamplingParams | list[SamplingParams] | None = None) -> list[RequestOutput]:
        """Render each conversation with the checkpoint's chat template (generation prompt added)
        and generate; `messages` is one conversation or a list of them."""
        if self.tokenizer is None:
            raise ValueError("this checkpoint has no tokenizer.json, so it has no chat template")
        conversations = [messages] if messages and isinstance(messages[0], dict) else messages
        prompts = [self.tokenizer.encode(self.tokenizer.apply_chat_template(c), add_special_tokens=False)
                   for c in conversations]
        return self.generate(prompts, sampling_params)

    def _token_ids(self, prompts) -> list[list[int]]:
        if isinstance(prompts, str) or (isinstance(prompts, list) and prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        out = []
        for p in prompts:
            if isinstance(p, str):
                if self.tokenizer is None:
                    raise ValueError("this checkpoint has no tokenizer.json: pass token ids, not text")
                out.append(self.tokenizer.encode(p))
            else:
                out.append(list(p))
        return out

    def shutdown(self) -> None:
        self.engine.executor.shutdown()


def _merge(merged: dict[str, RequestOutput], delta: RequestOutput) -> None:
    """Fold a streaming delta into the request's accumulated output."""
    acc = merged.setdefault(delta.request_id, RequestOutput(delta.request_id, delta.prompt_token_ids, [],
                                                            False, delta.usage, delta.metrics))
    if delta.prompt_logprobs is not None:
        acc.prompt_logprobs = delta.prompt_logprobs
    by_index = {c.index: c for c in acc.outputs}
    for c in delta.outputs:
        into = by_index.get(c.index)
        if into is None:
            into = by_index[c.index] = CompletionOutput(c.index, [], "", [] if c.logprobs is not None else None)
        into.token_ids += c.token_ids
        into.text += c.text
        if c.logprobs is not None:
            into.logprobs += c.logprobs
        into.finish_reason, into.stop_reason = c.finish_reason, c.stop_reason
    acc.outputs = [by_index[i] for i in sorted(by_index)]
    acc.finished, acc.usage = delta.finished, delta.usage
