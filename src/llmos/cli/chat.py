"""``llmos chat``: an interactive chat that lasts.

- The model is checked before the first prompt.
- A conversation that outgrows the model's context loses its oldest turns (the system
  prompt stays), with a note saying so: the server's ``context_length_exceeded`` says
  when, exactly, so nothing is guessed from a tokenizer.
- Ctrl-C during an answer stops that answer (closing the stream cancels it on the
  server) and keeps the session; Ctrl-C or Ctrl-D at the prompt leaves.
- Slash commands are handled here and never sent to the model.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import typer
from rich.console import Console

from llmos.cli.client import api_error, err, http_client, no_server

HELP = """commands (never sent to the model):
  /help                 this list
  /clear                forget the conversation (the system prompt stays)
  /system TEXT          set the system prompt (empty: none)
  /set NAME VALUE       temperature, top_p, max_tokens or seed (/set NAME: back to default)
  /show                 the settings and the conversation's length
  /save FILE            write the conversation as JSON
  /load FILE            read a conversation written by /save
  /bye, /exit, /quit    leave (so do Ctrl-D, and Ctrl-C at the prompt)
Ctrl-C during an answer stops it; the chat goes on."""

SETTINGS: dict[str, Callable[[str], Any]] = {
    "temperature": float, "top_p": float, "max_tokens": int, "seed": int}


class ChatError(Exception):
    """An answer failed; the message says why (the session goes on)."""


@dataclass
class Session:
    """A conversation: the system prompt, the turns, the sampling settings."""

    model: str
    system: str | None = None
    turns: list[dict[str, str]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    def messages(self) -> list[dict[str, str]]:
        system = [{"role": "system", "content": self.system}] if self.system else []
        return system + self.turns

    def body(self) -> dict[str, Any]:
        return {"model": self.model, "messages": self.messages(), "stream": True,
                **self.settings}

    def drop_oldest_turn(self) -> bool:
        """Forgets the oldest exchange (a user message and the answer to it), keeping
        the last user message; False when nothing is left to forget."""
        if len(self.turns) <= 1:
            return False
        del self.turns[0]
        while len(self.turns) > 1 and self.turns[0]["role"] != "user":
            del self.turns[0]
        return True

    def command(self, line: str) -> str | None:
        """Carries out a slash command; returns what to print, or None to leave."""
        name, _, rest = line.strip().partition(" ")
        rest = rest.strip()
        if name in ("/bye", "/exit", "/quit"):
            return None
        if name == "/help":
            return HELP
        if name == "/clear":
            self.turns.clear()
            return "(the conversation is forgotten)"
        if name == "/system":
            self.system = rest or None
            return f"(system prompt {'set' if rest else 'removed'})"
        if name == "/set":
            return self._set(rest)
        if name == "/show":
            return (f"model {self.model}, {len(self.turns)} messages, system prompt: "
                    f"{self.system or 'none'}, settings: {self.settings or 'defaults'}")
        if name == "/save":
            if not rest:
                return "usage: /save FILE"
            Path(rest).write_text(json.dumps({"model": self.model, "system": self.system,
                                              "turns": self.turns}, indent=2))
            return f"(saved {len(self.turns)} messages to {rest})"
        if name == "/load":
            return self._load(rest)
        return f"unknown command {name}; /help lists them"

    def _set(self, rest: str) -> str:
        key, _, value = rest.partition(" ")
        if key not in SETTINGS:
            return f"usage: /set NAME VALUE, NAME one of {', '.join(SETTINGS)}"
        if not value.strip():
            self.settings.pop(key, None)
            return f"({key}: the server's default)"
        try:
            self.settings[key] = SETTINGS[key](value.strip())
        except ValueError:
            return f"{key} takes a number, not {value.strip()!r}"
        return f"({key} = {self.settings[key]})"

    def _load(self, rest: str) -> str:
        if not rest:
            return "usage: /load FILE"
        try:
            saved = json.loads(Path(rest).read_text())
            turns = [{"role": str(t["role"]), "content": str(t["content"])}
                     for t in saved["turns"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            return f"cannot load {rest}: {exc}"
        self.turns = turns
        self.system = saved.get("system")
        return f"(loaded {len(turns)} messages from {rest})"


def check_model(client: httpx.Client, base: str, model: str) -> None:
    """Fails (with the models served) before the first prompt when the model is unknown."""
    try:
        response = client.get(f"/v1/models/{model}")
        if response.status_code == 404:
            served = [m["id"] for m in client.get("/v1/models").json().get("data", [])]
            raise ChatError(f"no model {model!r} at {base}; it serves: "
                            f"{', '.join(served) or 'none'}")
        if response.status_code >= 400:
            raise api_error(response)
    except httpx.HTTPError:
        raise no_server(base) from None


def answer(client: httpx.Client, base: str, session: Session, out: Console) -> None:
    """Streams the answer to the session's last user message and adds it to the turns.
    When the conversation does not fit, the oldest turns go first (noted)."""
    dropped = 0
    while True:
        try:
            text = stream_answer(client, session.body(), out)
        except ContextFull as full:
            if not session.drop_oldest_turn():
                session.turns.pop()
                raise ChatError(f"{full} (even alone, this message does not fit; it was "
                                "not kept)") from None
            dropped += 1
            continue
        if dropped:
            err.print(f"[dim](the {dropped} oldest exchange(s) were left out: the "
                      "conversation outgrew the model's context)[/dim]", highlight=False)
        session.turns.append({"role": "assistant", "content": text})
        return


class ContextFull(ChatError):
    """The server answered ``context_length_exceeded``."""


def stream_answer(client: httpx.Client, body: dict[str, Any], out: Console) -> str:
    """Streams one answer to ``out``; returns its text (what came, if stopped)."""
    parts: list[str] = []
    try:
        with client.stream("POST", "/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                response.read()
                error = _error_of(response)
                if error.get("code") == "context_length_exceeded":
                    raise ContextFull(error.get("message", "the context is full"))
                raise ChatError(f"error {response.status_code}: "
                                f"{error.get('message') or response.text}")
            try:
                for line in response.iter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    event = json.loads(line[6:])
                    if "error" in event:
                        raise ChatError(event["error"].get("message", "the answer failed"))
                    for choice in event.get("choices", []):
                        text = choice.get("delta", {}).get("content") or ""
                        parts.append(text)
                        out.print(text, end="", markup=False, highlight=False)
            except KeyboardInterrupt:
                # leaving the block closes the stream: the server cancels the answer
                out.print()
                err.print("[dim](stopped)[/dim]", highlight=False)
                return "".join(parts)
    except httpx.HTTPError as exc:
        raise ChatError(f"the server at {client.base_url} did not answer: {exc}") from None
    out.print()
    return "".join(parts)


def _error_of(response: httpx.Response) -> dict[str, Any]:
    try:
        error = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        return {}
    return error if isinstance(error, dict) else {}


def run(base: str, model: str, system: str | None, max_tokens: int | None,
        out: Console) -> None:
    session = Session(model, system, settings={"max_tokens": max_tokens} if max_tokens
                      else {})
    # Ctrl-C is how an answer stops: Python turns SIGINT into KeyboardInterrupt only if
    # it was not ignored when the process started (a shell's background job ignores it).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with http_client(base) as client:
        try:
            check_model(client, base, model)
        except ChatError as exc:
            err.print(f"[red]{exc}[/red]")
            raise typer.Exit(code=1) from None
        err.print(f"Chatting with [bold]{model}[/bold] at {base}. /help for commands; "
                  "Ctrl-C stops an answer, Ctrl-D leaves.")
        while True:
            try:
                line = input(">>> ")
            except (EOFError, KeyboardInterrupt):
                out.print()
                return
            if not line.strip():
                continue
            if line.lstrip().startswith("/"):
                said = session.command(line)
                if said is None:
                    return
                err.print(said, markup=False, highlight=False)
                continue
            session.turns.append({"role": "user", "content": line})
            try:
                answer(client, base, session, out)
            except (ChatError, KeyboardInterrupt) as exc:
                err.print(f"[red]{exc}[/red]" if isinstance(exc, ChatError)
                          else "[dim](stopped)[/dim]", highlight=False)
                if session.turns and session.turns[-1]["role"] == "user":
                    session.turns.pop()  # (unanswered: the next prompt starts afresh)
