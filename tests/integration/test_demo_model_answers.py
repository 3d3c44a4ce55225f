"""The built-in demo model answers: a real `fathom serve` with no `--model`, the official `openai`
client, temperature 0, on the held-out two-digit problems (never in its training set)."""

import asyncio
import re

import openai
import pytest

from fathom.worker.demo_model.corpus import GREETING, QUESTIONS
from fathom.worker.demo_model.corpus import test_problems as held_out
from support.serve_process import ServeProcess

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server():
    s = ServeProcess().wait_ready()
    yield s
    s.stop()
    assert "Traceback" not in s.output, s.output


async def ask_all(url: str, questions: list[str]) -> list:
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=300)
    gate = asyncio.Semaphore(32)

    async def ask(q):
        async with gate:
            r = await client.chat.completions.create(model="fathom-demo", messages=[{"role": "user", "content": q}],
                                                     temperature=0, max_tokens=160)
            return r.choices[0].message

    return await asyncio.gather(*(ask(q) for q in questions))


def answered(problem, message) -> bool:
    m = re.fullmatch(r".* = (-?\d+)\.", message.content or "")
    return m is not None and int(m.group(1)) == problem.result


def accuracy(server, ops: str) -> tuple[float, list]:
    problems = [p for p in held_out() if p.op in ops]
    questions = [QUESTIONS[p.op][i % len(QUESTIONS[p.op])].format(a=p.a, b=p.b) for i, p in enumerate(problems)]
    messages = asyncio.run(ask_all(server.url, questions))
    for p, m in zip(problems, messages):
        assert m.reasoning_content and m.reasoning_content.startswith(f"{p.a}{p.op}{p.b}: "), (p, m)
    hits = [answered(p, m) for p, m in zip(problems, messages)]
    return sum(hits) / len(hits), [(q, m.content) for q, m, ok in zip(questions, messages, hits) if not ok]


def test_adds_and_subtracts_held_out_two_digit_numbers(server):
    acc, wrong = accuracy(server, "+-")
    print(f"+ and -: {acc:.1%} of 200 held-out problems right; wrong: {wrong}")
    assert acc >= 0.95, wrong


def test_multiplies_sometimes(server):
    """× is beyond a model this small in this budget (5% measured; docs/demo_model.md): reported,
    and held to a floor above chance (a two-to-four-digit guess)."""
    acc, wrong = accuracy(server, "*")
    print(f"×: {acc:.1%} of 100 held-out problems right; wrong: {wrong[:10]}")
    assert acc >= 0.03, wrong


def test_greets_and_thinks_first(server):
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0)
    r = client.chat.completions.create(model="fathom-demo", temperature=0, max_tokens=200,
                                       messages=[{"role": "system", "content": "You are a helpful assistant."},
                                                 {"role": "user", "content": "Hello!"}])
    m = r.choices[0].message
    assert m.content == GREETING and m.reasoning_content and r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens_details.reasoning_tokens > 0
