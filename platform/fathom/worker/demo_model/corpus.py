"""The demo model's synthetic corpus: two-digit arithmetic with a digit-wise `<think>` trace, and a
greeting, as chat conversations. Deterministic: everything is drawn from `random.Random(seed)`.

Every answer thinks first, in a trace a tiny model can learn (ones digit first, then tens):

    47+38: 7+8=15, carry 1; 4+3+1=8. So 85.
    83-47: 3-7, borrow 1, 13-7=6; 8-4-1=3. So 36.
    38-83: 38<83, so -(83-38). 3-8, borrow 1, 13-8=5; 8-3-1=4. So -45.
    47*38: 47*8: 7*8=56, 4*8+5=37, so 376; 47*30: 7*3=21, 4*3+2=14, so 1410; 376+1410=1786. So 1786.

The held-out test set (`test_problems`) is drawn first from its own seed; `train_problems` never
yields one of its (op, a, b) triples.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

OPS = ("+", "-", "*")
QUESTIONS = {
    "+": ["What is {a} + {b}?", "{a}+{b}=?", "Compute {a} plus {b}.", "What's the sum of {a} and {b}?",
          "{a} + {b}", "Add {a} and {b}.", "How much is {a} plus {b}?"],
    "-": ["What is {a} - {b}?", "{a}-{b}=?", "Compute {a} minus {b}.", "Subtract {b} from {a}.",
          "{a} - {b}", "What is {a} minus {b}?", "How much is {a} minus {b}?"],
    "*": ["What is {a} * {b}?", "{a}*{b}=?", "Compute {a} times {b}.", "Multiply {a} by {b}.",
          "What is {a} × {b}?", "What is the product of {a} and {b}?", "How much is {a} times {b}?"],
}  # fmt: skip
SIGN = {"+": "+", "-": "-", "*": "×"}
GREETINGS = ["Hello", "Hello!", "Hi", "Hi!", "hi", "hello", "Hey", "Hey there!", "Good morning!",
             "Who are you?", "What are you?", "Introduce yourself.", "What can you do?", "Hello, who are you?"]  # fmt: skip
GREETING_THOUGHT = "The user greets me. I introduce myself."
GREETING = (
    "Hello! I am Fathom's demo model, a tiny DeepSeek-V3 trained on a CPU in minutes. "
    "I add, subtract and multiply two-digit numbers."
)
SYSTEMS = ["You are a helpful assistant.", "You are Fathom's demo model.", "Answer briefly.",
           "You are a calculator."]  # fmt: skip
TEST_SEED = 20251203
N_TEST = {"+": 100, "-": 100, "*": 100}


@dataclass(frozen=True)
class Problem:
    op: str
    a: int
    b: int

    @property
    def result(self) -> int:
        return {"+": self.a + self.b, "-": self.a - self.b, "*": self.a * self.b}[self.op]

    @property
    def answer(self) -> str:
        return f"{self.a} {SIGN[self.op]} {self.b} = {self.result}."


def _add_trace(a: int, b: int) -> str:
    s0 = a % 10 + b % 10
    c = s0 // 10
    s1 = a // 10 + b // 10 + c
    return f"{a % 10}+{b % 10}={s0}, carry {c}; {a // 10}+{b // 10}+{c}={s1}. So {s1}{s0 % 10}."


def _sub_trace(a: int, b: int) -> str:
    """a >= b."""
    a0, b0, a1, b1 = a % 10, b % 10, a // 10, b // 10
    borrow = int(a0 < b0)
    d0 = a0 + 10 * borrow - b0
    d1 = a1 - b1 - borrow
    return f"{a0}-{b0}, borrow {borrow}, {a0 + 10 * borrow}-{b0}={d0}; {a1}-{b1}-{borrow}={d1}. So {10 * d1 + d0}."


def _times_digit(a: int, d: int) -> str:
    """a (two digits) times a digit d: ones, then tens with the carry."""
    p0 = (a % 10) * d
    p1 = (a // 10) * d + p0 // 10
    return f"{a % 10}*{d}={p0}, {a // 10}*{d}+{p0 // 10}={p1}, so {a * d}"


def trace(p: Problem) -> str:
    head = f"{p.a}{p.op}{p.b}: "
    if p.op == "+":
        return head + _add_trace(p.a, p.b)
    if p.op == "-":
        if p.a >= p.b:
            return head + _sub_trace(p.a, p.b)
        return head + f"{p.a}<{p.b}, so -({p.b}-{p.a}). " + _sub_trace(p.b, p.a).replace("So ", "So -")
    b0, b1 = p.b % 10, p.b // 10
    lo, hi = p.a * b0, p.a * b1 * 10
    return (
        head + f"{p.a}*{b0}: {_times_digit(p.a, b0)}; {p.a}*{b1}0: {_times_digit(p.a, b1)}0; "
        f"{lo}+{hi}={lo + hi}. So {p.result}."
    )


def completion(p: Problem | None) -> str:
    """The assistant's output: thought, then answer (None: the greeting)."""
    if p is None:
        return f"<think>{GREETING_THOUGHT}</think>{GREETING}"
    return f"<think>{trace(p)}</think>{p.answer}"


def question(p: Problem, rng: random.Random) -> str:
    return rng.choice(QUESTIONS[p.op]).format(a=p.a, b=p.b)


def test_problems() -> list[Problem]:
    """The held-out problems, by op in OPS order (N_TEST of each), two-digit operands."""
    rng = random.Random(TEST_SEED)
    out = []
    for op in OPS:
        pairs = [(a, b) for a in range(10, 100) for b in range(10, 100)]
        out += [Problem(op, a, b) for a, b in rng.sample(pairs, N_TEST[op])]
    return out


def train_problems(rng: random.Random):
    """An endless stream of two-digit problems that are not in test_problems(); × one time in seven."""
    held_out = set(test_problems())
    while True:
        p = Problem(rng.choice("+++---*"), rng.randrange(10, 100), rng.randrange(10, 100))
        if p not in held_out:
            yield p


def conversations(seed: int):
    """An endless stream of (messages, completion): 1 in 16 a greeting; some with a system prompt or an
    earlier exchange (whose assistant turn is its answer alone, as clients send history back)."""
    rng = random.Random(seed)
    problems = train_problems(rng)
    while True:
        messages = []
        if rng.random() < 0.1:
            messages.append({"role": "system", "content": rng.choice(SYSTEMS)})
        if rng.random() < 0.1:
            p = next(problems)
            messages += [
                {"role": "user", "content": question(p, rng)},
                {"role": "assistant", "content": p.answer},
            ]
        if rng.random() < 0.0625:
            messages.append({"role": "user", "content": rng.choice(GREETINGS)})
            yield messages, completion(None)
        else:
            p = next(problems)
            messages.append({"role": "user", "content": question(p, rng)})
            yield messages, completion(p)
