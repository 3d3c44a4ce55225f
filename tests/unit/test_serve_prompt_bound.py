"""Issue 12: a text too long to fit is refused before it is tokenised (a multi-MiB prompt costs
seconds of the replica's CPU to tokenise); the bound never refuses a prompt that fits."""

import pytest

from fathom.api.openai_error import APIError
from fathom.engine.tokenizer import Tokenizer
from fathom.serve.preprocess import prepare
from fathom.serve.protocol import ChatCompletionRequest, CompletionRequest
from fathom.worker.demo import demo_checkpoint_dir

MAX_MODEL_LEN = 256
FIVE_MIB = 5 * 1024 * 1024


class CountingTokenizer(Tokenizer):
    """The demo checkpoint's tokenizer, counting the characters it was asked to tokenise."""

    encoded = 0

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        self.encoded += len(text)
        return super().encode(text, add_special_tokens)


@pytest.fixture(scope="module")
def tokenizer() -> CountingTokenizer:
    base = Tokenizer.from_pretrained(demo_checkpoint_dir())
    return CountingTokenizer(base._tok, base.config)


def test_the_bound_is_the_longest_token_of_a_byte_level_bpe(tokenizer):
    longest = max(len(t) for t in tokenizer._tok.get_vocab(with_added_tokens=False))
    specials = [len(t.content.encode()) for t in tokenizer._tok.get_added_tokens_decoder().values()]
    assert tokenizer.max_token_bytes == max([longest, *specials]) > 1


@pytest.mark.parametrize("kind", ["completion", "chat"])
def test_a_5_mib_prompt_is_refused_without_tokenising(tokenizer, kind):
    text = "All work and no play makes Jack a dull boy. " * (FIVE_MIB // 44)
    if kind == "chat":
        req = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": text}], max_tokens=1)
    else:
        req = CompletionRequest(model="m", prompt=text, max_tokens=1)
    before = tokenizer.encoded
    with pytest.raises(APIError) as e:
        prepare(kind, req, tokenizer, MAX_MODEL_LEN)
    assert e.value.status == 400 and e.value.code == "context_length_exceeded"
    assert e.value.param == ("messages" if kind == "chat" else "prompt")
    assert tokenizer.encoded == before  # not one character tokenised


def test_the_longest_text_that_could_fit_is_still_tokenised_and_checked(tokenizer):
    """At the bound the prompt is tokenised and judged by its real token count; well under it, served."""
    at_bound = "x" * (MAX_MODEL_LEN * tokenizer.max_token_bytes)
    before = tokenizer.encoded
    with pytest.raises(APIError) as e:
        prepare("completion", CompletionRequest(model="m", prompt=at_bound, max_tokens=1), tokenizer, MAX_MODEL_LEN)
    assert e.value.code == "context_length_exceeded" and "tokens" in str(e.value)
    assert tokenizer.encoded == before + len(at_bound)
    [call] = prepare("completion", CompletionRequest(model="m", prompt="hello " * 40, max_tokens=1), tokenizer,
                     MAX_MODEL_LEN)
    assert 0 < len(call.prompt_ids) < MAX_MODEL_LEN


def test_other_tokenizers_get_no_bound(tokenizer):
    """A normalizer may shrink text: no bound, the prompt is tokenised as before."""
    from tokenizers import normalizers

    tok = Tokenizer(Tokenizer.from_pretrained(demo_checkpoint_dir())._tok, {})
    tok._tok.normalizer = normalizers.NFKC()
    assert tok.max_token_bytes is None
