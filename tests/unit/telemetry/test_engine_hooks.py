"""The engine's tracing seams: carriers reach the forward step (links), the engine's stamps
become the replica's child spans, and a failing step is recorded on both sides."""

import asyncio
from types import SimpleNamespace

import pytest
from opentelemetry.trace import StatusCode

from fathom.engine.async_engine import AsyncEngine
from fathom.engine.engine_core import ThreadCore
from fathom.engine.errors import EngineDeadError
from fathom.engine.llm_engine import EngineConfig, LLMEngine
from fathom.engine.sampling_params import SamplingParams
from fathom.engine.step_input import StepInput, StepOutput
from fathom.telemetry import start_request_trace
from fathom.worker.in_process import InProcessExecutor


class CountingRunner:
    """A stand-in model runner: next token = (last token + 1) mod vocab; can be made to fail."""

    def __init__(self, num_blocks: int = 64):
        self.num_blocks = num_blocks
        self.model = SimpleNamespace(config=SimpleNamespace(vocab_size=97))
        self.fail = False
        self.steps: list[StepInput] = []

    def execute(self, step: StepInput) -> StepOutput:
        if self.fail:
            raise RuntimeError("NaN in MoE combine")
        self.steps.append(step)
        ends = [sum(step.query_lens[: r + 1]) - 1 for r in step.sample_rows]
        tokens = [(step.token_ids[e] + 1) % 97 for e in ends]
        return StepOutput(tokens, [None] * len(tokens), [None] * len(tokens))


@pytest.fixture
async def engine():
    runner = CountingRunner()
    config = EngineConfig(max_model_len=128, block_size=4, max_num_batched_tokens=16)
    eng = AsyncEngine(ThreadCore(LLMEngine(config, InProcessExecutor(runner)), idle_wait_s=0.05), None)
    eng.runner = runner
    yield eng
    await eng.shutdown()


async def run(engine, rid, prompt, rt, **params):
    last = None
    async for out in engine.generate(
        rid, prompt, SamplingParams(temperature=0, **params), trace_context=rt.carrier
    ):
        rt.tokens(sum(len(c.token_ids) for c in out.outputs))
        last = out
    rt.observe_engine(last.metrics)
    rt.finish([c.finish_reason for c in last.outputs], input_tokens=last.usage.prompt_tokens)
    return last


async def test_steps_link_to_every_request_they_serve(engine, spans, by_name):
    a = start_request_trace(None, model="demo", request_id="a")
    b = start_request_trace(None, model="demo", request_id="b")
    await asyncio.gather(
        run(engine, "a", [1] * 40, a, max_tokens=4), run(engine, "b", [2] * 5, b, max_tokens=4)
    )
    finished = spans.get_finished_spans()
    steps = [s for s in finished if s.name == "fathom.forward"]
    assert len(steps) == len(engine.runner.steps) >= 3
    ids = {r.span.get_span_context().span_id: r for r in (a, b)}
    per_request = {
        rid: sum(1 for s in steps for lk in s.links if ids[lk.context.span_id] is r)
        for rid, r in (("a", a), ("b", b))
    }
    assert per_request["a"] >= 3 + 3 and per_request["b"] >= 1 + 3  # 40-token prompt: 3 chunks of <=16
    prefill_a = [
        s
        for s in finished
        if s.name == "fathom.prefill" and s.parent.span_id == a.span.get_span_context().span_id
    ]
    assert sum(e.attributes["num_tokens"] for e in prefill_a[0].events) == 40
    assert len(prefill_a[0].events) >= 3
    assert all(s.attributes["fathom.world_size"] == 1 for s in steps)


def test_one_step_carries_one_link_per_request_in_its_batch():
    runner = CountingRunner()
    engine = LLMEngine(EngineConfig(max_model_len=64, block_size=4), InProcessExecutor(runner))
    a, b = start_request_trace(None, model="demo"), start_request_trace(None, model="demo")
    engine.add_request(
        "a", [1] * 6, SamplingParams(temperature=0, max_tokens=2, n=2), trace_context=a.carrier
    )
    engine.add_request("b", [2] * 6, SamplingParams(temperature=0, max_tokens=2), trace_context=b.carrier)
    engine.add_request("c", [3] * 6, SamplingParams(temperature=0, max_tokens=2))  # not traced
    while engine.has_unfinished_requests():
        engine.step()
    assert runner.steps[0].trace_contexts == [a.carrier, b.carrier]
    both_samples = [s for s in runner.steps if len(s.query_lens) == 4]  # a's 2 samples, b, c
    assert both_samples and all(
        s.trace_contexts == [a.carrier, b.carrier] for s in both_samples
    )  # n=2: still one link


async def test_untraced_requests_cost_no_step_spans(engine, spans):
    async for _ in engine.generate("x", [3] * 5, SamplingParams(temperature=0, max_tokens=3)):
        pass
    assert [s.name for s in spans.get_finished_spans()] == []
    assert all(step.trace_contexts == [] for step in engine.runner.steps)


async def test_failed_step_is_an_error_on_the_step_and_the_request(engine, spans, by_name):
    engine.runner.fail = True
    rt = start_request_trace(None, model="demo")
    with pytest.raises(EngineDeadError) as err:
        await run(engine, "f", [4] * 5, rt, max_tokens=3)
    rt.fail(err.value)
    finished = spans.get_finished_spans()
    step = by_name(finished, "fathom.forward")
    assert step.status.status_code == StatusCode.ERROR and "NaN in MoE combine" in step.status.description
    chat = by_name(finished, "chat demo")
    assert chat.status.status_code == StatusCode.ERROR and chat.attributes["error.type"] == "EngineDeadError"
    assert [lk.context.span_id for lk in step.links] == [chat.context.span_id]
