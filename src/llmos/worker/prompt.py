"""A cheap lower bound on a prompt's tokens, known before anything is tokenized.

llama.cpp applies the chat template and tokenizes inside the call that starts a
request, where nothing can stop it: 100,000 chat messages kept a core busy for
minutes. No token covers more characters than the vocabulary's longest token has
bytes, and a chat template spends at least one token per message, so a prompt
whose bound already exceeds a slot's context is refused without tokenizing, and
one that passes is at most ``context x longest token`` characters long: cheap to
tokenize.
"""

from __future__ import annotations

from typing import Any

from llmos.errors import ContextLengthExceeded


def _text_floor(text: str, longest_token: int | None) -> int:
    if not longest_token or not text:
        return 0
    return -(-len(text) // longest_token)


def min_prompt_tokens(kind: str, body: dict[str, Any], longest_token: int | None) -> int:
    """At least this many tokens (``longest_token``: the vocabulary's, in bytes)."""
    if kind == "chat":
        messages = body.get("messages") or []
        return sum(1 + _text_floor(str(m.get("content") or ""), longest_token)
                   for m in messages if isinstance(m, dict))
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return _text_floor(prompt, longest_token)
    if isinstance(prompt, list):
        return sum(1 if isinstance(p, int) else _text_floor(str(p), longest_token)
                   for p in prompt)
    return 0


def check_prompt_bound(kind: str, body: dict[str, Any], max_tokens_explicit: bool,
                       ctx_per_slot: int | None, longest_token: int | None) -> None:
    """Refuse a prompt that surely overflows a slot, before it is tokenized."""
    if ctx_per_slot is None:
        return
    floor = min_prompt_tokens(kind, body, longest_token)
    max_tokens = int(body.get("max_tokens") or 0) if max_tokens_explicit else 0
    if floor + max_tokens > ctx_per_slot:
        param = "messages" if kind == "chat" else "prompt"
        raise ContextLengthExceeded(
            f"the prompt has at least {floor} tokens"
            + (f" and max_tokens is {max_tokens}" if max_tokens else "")
            + f", but a request slot holds {ctx_per_slot} tokens (context size / slots); "
            "shorten the prompt, or raise engine.ctx_size (LLMOS_ENGINE__CTX_SIZE)",
            param=param)
