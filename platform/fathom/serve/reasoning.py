"""DeepSeek-R1 reasoning parser: `<think>…</think>` becomes `reasoning_content`.

R1 writes its chain of thought between `<think>` and `</think>`, then the answer. Its chat
template usually ends the prompt with `<think>\\n` already, so the output holds only the
closing tag; otherwise the output opens with `<think>`. The parser is a small state machine
over text deltas that may split a tag anywhere (`"</thi" + "nk>"`): it holds back exactly
the suffix that could still become a tag and releases it once it cannot, so concatenating
its outputs over any split of the text gives the same result as parsing the whole text.
"""

from dataclasses import dataclass

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


@dataclass(slots=True)
class Split:
    reasoning: str = ""
    content: str = ""


def _held_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `tag`."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-n:]):
            return n
    return 0


class ReasoningParser:
    """Streaming splitter of one choice's output text into (reasoning, content).

    `prompt_opens_think`: the rendered prompt already ends inside `<think>` (R1's template),
    so output starts as reasoning. Otherwise reasoning starts only if the output begins with
    `<think>` (leading whitespace allowed).
    """

    def __init__(self, prompt_opens_think: bool = False):
        self._state = "reasoning" if prompt_opens_think else "start"
        self._held = ""

    @staticmethod
    def prompt_opens_think(prompt_text: str) -> bool:
        tail = prompt_text.rstrip()
        return tail.endswith(THINK_OPEN)

    @property
    def in_reasoning(self) -> bool:
        """Inside `<think>`: the next tokens are reasoning tokens (the closing tag's included)."""
        return self._state == "reasoning"

    def feed(self, text: str) -> Split:
        out = Split()
        text = self._held + text
        self._held = ""
        while text:
            text = getattr(self, f"_in_{self._state}")(text, out)
        return out

    def finish(self) -> Split:
        """Release anything held back (the output ended mid-way through a possible tag)."""
        out = Split()
        held, self._held = self._held, ""
        if self._state == "reasoning":
            out.reasoning = held
        elif self._state in ("content", "start"):
            out.content = held
        return out

    # each state consumes a prefix of `text`, appends to `out`, returns the unconsumed rest

    def _in_start(self, text: str, out: Split) -> str:
        stripped = text.lstrip()
        if stripped.startswith(THINK_OPEN):
            self._state = "reasoning"
            return stripped[len(THINK_OPEN):]
        if THINK_OPEN.startswith(stripped):  # all whitespace, or a prefix of the tag: wait
            self._held = text
            return ""
        self._state = "content"
        return text

    def _in_reasoning(self, text: str, out: Split) -> str:
        i = text.find(THINK_CLOSE)
        if i >= 0:
            out.reasoning += text[:i]
            self._state = "after_think"
            return text[i + len(THINK_CLOSE):]
        n = _held_suffix(text, THINK_CLOSE)
        out.reasoning += text[: len(text) - n]
        self._held = text[len(text) - n:]
        return ""

    def _in_after_think(self, text: str, out: Split) -> str:
        text = text.lstrip("\n")  # R1 writes "</think>\n\n" before the answer
        if text:
            self._state = "content"
        return text

    def _in_content(self, text: str, out: Split) -> str:
        out.content += text
        return ""


def make_parser(name: str, prompt_text: str) -> ReasoningParser | None:
    """The parser named by EngineSettings.reasoning_parser for one choice, or None."""
    if name == "none":
        return None
    if name == "deepseek_r1":
        return ReasoningParser(ReasoningParser.prompt_opens_think(prompt_text))
    raise ValueError(f"unknown reasoning parser {name!r}")
