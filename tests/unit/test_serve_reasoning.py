import random

import pytest

from fathom.serve.reasoning import ReasoningParser, Split, make_parser


def parse_whole(text: str, opens: bool = False) -> tuple[str, str]:
    p = ReasoningParser(opens)
    a, b = p.feed(text), p.finish()
    return a.reasoning + b.reasoning, a.content + b.content


def parse_split(text: str, cuts: list[int], opens: bool = False) -> tuple[str, str]:
    p = ReasoningParser(opens)
    r = c = ""
    prev = 0
    for cut in [*sorted(cuts), len(text)]:
        s = p.feed(text[prev:cut])
        r, c, prev = r + s.reasoning, c + s.content, cut
    s = p.finish()
    return r + s.reasoning, c + s.content


@pytest.mark.parametrize(
    "text, opens, expected",
    [
        ("<think>why</think>\n\nanswer", False, ("why", "answer")),
        ("  <think>a<b</think>c", False, ("a<b", "c")),
        ("plain answer", False, ("", "plain answer")),
        ("no <think> at start", False, ("", "no <think> at start")),
        ("thoughts</think>\n\nfinal", True, ("thoughts", "final")),
        ("unterminated thoughts </thi", True, ("unterminated thoughts </thi", "")),
        ("<thin", False, ("", "<thin")),
        ("", False, ("", "")),
        ("<think></think>x</think>", False, ("", "x</think>")),
    ],
)
def test_whole_text(text, opens, expected):
    assert parse_whole(text, opens) == expected


@pytest.mark.parametrize("opens", [False, True])
def test_every_split_gives_the_whole_text_result(opens):
    rng = random.Random(0)
    texts = [
        "<think>step 1 </ step <2></think>\n\nThe answer is </think> 42",
        "  <think>x</think>y",
        "a</think>b",
        "<thi",
        "<think>never closed </thin",
    ]
    for text in texts:
        want = parse_whole(text, opens)
        for n_cuts in range(1, 6):
            for _ in range(40):
                cuts = [rng.randint(0, len(text)) for _ in range(n_cuts)]
                assert parse_split(text, cuts, opens) == want, (text, cuts)
        # one character at a time
        assert parse_split(text, list(range(len(text))), opens) == want


def test_holds_back_only_a_possible_tag():
    p = ReasoningParser(prompt_opens_think=True)
    assert p.feed("abc</th") == Split(reasoning="abc")
    assert p.feed("x") == Split(reasoning="</thx")
    assert p.feed("</think>") == Split()
    assert p.feed("\n\nhi") == Split(content="hi")


def test_prompt_opens_think_detects_r1_template():
    assert ReasoningParser.prompt_opens_think("<|Assistant|><think>\n")
    assert not ReasoningParser.prompt_opens_think("<|Assistant|>")
    assert make_parser("none", "x") is None
    assert make_parser("deepseek_r1", "<think>\n").feed("a</think>b") == Split("a", "b")
    with pytest.raises(ValueError, match="unknown reasoning parser 'qwen'"):
        make_parser("qwen", "")
