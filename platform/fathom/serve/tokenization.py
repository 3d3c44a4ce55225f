"""vLLM's `/tokenize` and `/detokenize`, answered by a model replica (it owns the tokenizer).

`/tokenize` takes a prompt ({prompt, add_special_tokens}) or a conversation ({messages,
add_generation_prompt, continue_final_message, chat_template_kwargs, tools,
add_special_tokens}), rendered by the same chat template code as /v1/chat/completions, and
returns {count, max_model_len, tokens, token_strs} (token_strs: the vocabulary's pieces when
`return_token_strs`, else null). `/detokenize` turns {tokens} into {prompt} (special tokens
kept). Nothing runs on the model, so nothing is metered (docs/architecture.md, HTTP)."""

from fathom.api.openai_error import APIError
from fathom.engine.tokenizer import Tokenizer
from fathom.serve.preprocess import render_chat
from fathom.serve.protocol import DetokenizeRequest, TokenizeChatRequest, TokenizeCompletionRequest

NO_TOKENIZER = "this model has no tokenizer (tokenizer.json), so it cannot tokenize or detokenize"


def tokenize(req: TokenizeCompletionRequest | TokenizeChatRequest, tokenizer: Tokenizer | None,
             max_model_len: int) -> dict:
    if tokenizer is None:
        raise APIError(400, NO_TOKENIZER, code="no_tokenizer")
    text = render_chat(req, tokenizer) if isinstance(req, TokenizeChatRequest) else req.prompt
    ids = tokenizer.encode(text, add_special_tokens=req.add_special_tokens)
    strs = [tokenizer.id_to_token(t) or "" for t in ids] if req.return_token_strs else None
    return {"count": len(ids), "max_model_len": max_model_len, "tokens": ids, "token_strs": strs}


def detokenize(req: DetokenizeRequest, tokenizer: Tokenizer | None) -> dict:
    if tokenizer is None:
        raise APIError(400, NO_TOKENIZER, code="no_tokenizer")
    vocab = tokenizer.vocab_size
    bad = next((t for t in req.tokens if t >= vocab), None)
    if bad is not None:
        raise APIError(400, f"token id {bad} is outside the vocabulary [0, {vocab})", param="tokens")
    return {"prompt": tokenizer.decode(req.tokens, skip_special_tokens=False)}
