"""Engine deltas -> OpenAI choices: text, R1 reasoning split, logprobs, finish reasons.

A `Choice` accumulates the engine's `CompletionOutput` deltas of one sample. In a stream,
`take()` returns everything pending since the last call as one chunk choice (several tokens
when the stream fell behind: that is the coalescing); without streaming, `result()` returns
the whole choice. Token strings for logprobs are cached per token id.
"""

from functools import lru_cache

from fathom.engine.outputs import CompletionOutput, TokenLogprob
from fathom.engine.tokenizer import Tokenizer, bytes_to_unicode
from fathom.serve.reasoning import ReasoningParser
from fathom.serve.tool_calls import ToolCallStream


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """Byte-level BPE's printable-character alphabet back to bytes."""
    return {ch: b for b, ch in bytes_to_unicode().items()}


class TokenStrings:
    """Token id -> (text, UTF-8 bytes) as OpenAI's logprobs report them."""

    def __init__(self, tokenizer: Tokenizer | None):
        self.tokenizer = tokenizer
        self._cache: dict[int, tuple[str, list[int]]] = {}

    def get(self, token_id: int) -> tuple[str, list[int]]:
        hit = self._cache.get(token_id)
        if hit is None:
            hit = self._cache[token_id] = self._compute(token_id)
        return hit

    def _compute(self, token_id: int) -> tuple[str, list[int]]:
        if self.tokenizer is None:  # no tokenizer.json: tokens are their ids
            return f"token_id:{token_id}", []
        piece = self.tokenizer.id_to_token(token_id) or ""
        dec = _byte_decoder()
        if piece and all(ch in dec for ch in piece):  # byte-level BPE piece: exact bytes
            raw = bytes(dec[ch] for ch in piece)
            return raw.decode("utf-8", errors="replace"), list(raw)
        text = self.tokenizer.decode([token_id], skip_special_tokens=False)
        return text, list(text.encode("utf-8"))


class Choice:
    """One choice (sample) of a chat or text completion, fed with engine deltas."""

    def __init__(self, index: int, chat: bool, strings: TokenStrings, parser: ReasoningParser | None = None,
                 echo: str = "", want_logprobs: bool = False, tokens_as_ids: bool = False,
                 tools: ToolCallStream | None = None):
        self.index = index
        self.tools = tools  # content -> tool calls (fathom.serve.tool_calls)
        self.reasoning_tokens = 0  # usage.completion_tokens_details.reasoning_tokens
        self._pending_tools: list[dict] = []
        self.tokens_as_ids = tokens_as_ids
        self.chat = chat
        self.strings = strings
        self.parser = parser
        self.want_logprobs = want_logprobs
        self.finish_reason: str | None = None
        self.text, self.reasoning = [echo], []  # whole output (non-stream)
        self.logprobs: list[TokenLogprob] = []
        self._pending_text, self._pending_reasoning = echo, ""
        self._pending_logprobs: list[TokenLogprob] = []
        self._sent_role = False
        self._finish_sent = False
        self._offset = 0  # characters of text already sent (completions text_offset)

    def add(self, out: CompletionOutput) -> None:
        text, reasoning = out.text, ""
        if self.parser is not None:
            if self.parser.in_reasoning or (not self.reasoning_tokens and out.text.lstrip().startswith("<think>")):
                self.reasoning_tokens += len(out.token_ids)
            split = self.parser.feed(text)
            if out.finish_reason is not None:
                tail = self.parser.finish()
                split.reasoning += tail.reasoning
                split.content += tail.content
            text, reasoning = split.content, split.reasoning
        if self.tools is not None:
            text, deltas = self.tools.feed(text, final=out.finish_reason is not None)
            self._pending_tools.extend(deltas)
        self._pending_text += text
        self._pending_reasoning += reasoning
        self.text.append(text)
        self.reasoning.append(reasoning)
        if self.want_logprobs and out.logprobs:
            self._pending_logprobs.extend(out.logprobs)
            self.logprobs.extend(out.logprobs)
        if out.finish_reason is not None:
            called = self.tools is not None and self.tools.sent
            self.finish_reason = "tool_calls" if called and out.finish_reason == "stop" else out.finish_reason

    def add_prompt_logprobs(self, prompt_ids: list[int], prompt_logprobs: list[TokenLogprob | None]) -> None:
        """echo with logprobs: the prompt's tokens lead the logprobs (the first one's logprob is
        null: nothing predicts it)."""
        lps = [lp or TokenLogprob(t, None) for t, lp in zip(prompt_ids, prompt_logprobs)]
        self._pending_logprobs.extend(lps)
        self.logprobs.extend(lps)

    @property
    def has_news(self) -> bool:
        return bool(self._pending_text or self._pending_reasoning or self._pending_logprobs or self._pending_tools
                    or (self.finish_reason and not self._finish_sent) or (self.chat and not self._sent_role))

    def take(self) -> dict:
        """The chunk choice with everything pending, then reset."""
        text, reasoning, lps = self._pending_text, self._pending_reasoning, self._pending_logprobs
        self._pending_text, self._pending_reasoning, self._pending_logprobs = "", "", []
        self._finish_sent = self.finish_reason is not None
        if not self.chat:
            logprobs = self._completion_logprobs(lps, text) if self.want_logprobs else None
            return {"index": self.index, "text": text, "logprobs": logprobs, "finish_reason": self.finish_reason}
        delta: dict = {}
        if not self._sent_role:
            delta["role"] = "assistant"
            self._sent_role = True
            delta["content"] = text
        elif text:
            delta["content"] = text
        if reasoning:
            delta["reasoning_content"] = reasoning
        if self._pending_tools:
            delta["tool_calls"], self._pending_tools = self._pending_tools, []
        logprobs = {"content": [self._chat_logprob(lp) for lp in lps]} if self.want_logprobs else None
        return {"index": self.index, "delta": delta, "logprobs": logprobs, "finish_reason": self.finish_reason}

    def result(self) -> dict:
        """The whole choice of a non-streamed response."""
        text, reasoning = "".join(self.text), "".join(self.reasoning)
        if not self.chat:
            logprobs = self._completion_logprobs(self.logprobs, text) if self.want_logprobs else None
            return {"index": self.index, "text": text, "logprobs": logprobs, "finish_reason": self.finish_reason}
        message = {"role": "assistant", "content": text if (text or not reasoning) else None}
        if self.parser is not None:
            message["reasoning_content"] = reasoning or None
        calls = self.tools.calls() if self.tools is not None else []
        if calls:
            message["tool_calls"] = calls
            message["content"] = text or None
        logprobs = {"content": [self._chat_logprob(lp) for lp in self.logprobs]} if self.want_logprobs else None
        return {"index": self.index, "message": message, "logprobs": logprobs, "finish_reason": self.finish_reason}

    def _token(self, token_id: int) -> tuple[str, list[int]]:
        text, raw = self.strings.get(token_id)
        return (f"token_id:{token_id}", raw) if self.tokens_as_ids else (text, raw)

    def _chat_logprob(self, lp: TokenLogprob) -> dict:
        token, raw = self._token(lp.token_id)
        top = []
        for tid, logprob in lp.top_logprobs:
            t, b = self._token(tid)
            top.append({"token": t, "logprob": logprob, "bytes": b})
        return {"token": token, "logprob": lp.logprob, "bytes": raw, "top_logprobs": top}

    def _completion_logprobs(self, lps: list[TokenLogprob], text: str) -> dict:
        tokens, offsets, offset = [], [], self._offset
        for lp in lps:
            token = self._token(lp.token_id)[0]
            tokens.append(token)
            offsets.append(offset)
            offset += len(self.strings.get(lp.token_id)[0])
        self._offset += len(text)
        return {
            "tokens": tokens,
            "token_logprobs": [lp.logprob for lp in lps],
            "top_logprobs": [{self._token(t)[0]: v for t, v in lp.top_logprobs} or None for lp in lps],
            "text_offset": offsets,
        }
