"""`llmos chat` in a pseudo-terminal, as a person types it."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator

import pexpect
import pytest

from llmos.cli.chat import Session
from tests.conftest import RunningServer
from tests.waiting import wait_until

PROMPT = ">>> "


@pytest.fixture
def chat(llmos_server: RunningServer) -> Iterator[pexpect.spawn]:
    # the shared server's slots hold 256 tokens: a conversation outgrows them fast
    child = pexpect.spawn(sys.executable, ["-m", "llmos", "chat", "--url", llmos_server.url,
                                           "--max-tokens", "16"],
                          encoding="utf-8", timeout=60, dimensions=(40, 200))
    try:
        child.expect_exact(PROMPT)
        yield child
    finally:
        child.close(force=True)


def test_a_conversation_longer_than_the_context_goes_on(chat: pexpect.spawn) -> None:
    """The oldest turns are left out, with a note, and no turn fails."""
    notes = 0
    for turn in range(14):
        chat.sendline(f"Turn {turn}: tell me one more thing about the sea and the sky.")
        chat.expect_exact(PROMPT)
        said = re.sub(r"\x1b\[[0-9;]*m", "", chat.before or "")  # (colours)
        assert "error" not in said.lower(), said
        notes += "oldest exchange(s) were left out" in said
    assert notes >= 1
    chat.sendline("/bye")
    chat.expect(pexpect.EOF)


def test_ctrl_c_stops_the_answer_and_keeps_the_session(chat: pexpect.spawn,
                                                       llmos_server: RunningServer) -> None:
    chat.sendline("/set max_tokens 200")
    chat.expect_exact(PROMPT)
    chat.sendline("Write a very long story about a lighthouse.")
    wait_until(lambda: llmos_server.metric("llmos_worker_busy_slots") > 0, 20,
               interval_s=0.02, what="the answer under way")
    chat.sendintr()
    chat.expect_exact("(stopped)")
    chat.expect_exact(PROMPT)
    wait_until(lambda: llmos_server.metric("llmos_worker_busy_slots") == 0, 10,
               what="the answer cancelled on the server")
    chat.sendline("/set max_tokens 4")
    chat.expect_exact(PROMPT)
    chat.sendline("And now?")  # the session goes on
    chat.expect_exact(PROMPT)
    assert "error" not in (chat.before or "").lower()


def test_slash_commands_stay_here(chat: pexpect.spawn) -> None:
    chat.sendline("/help")
    chat.expect_exact("never sent to the model")
    chat.expect_exact(PROMPT)
    chat.sendline("/nope")
    chat.expect_exact("unknown command /nope")
    chat.expect_exact(PROMPT)
    chat.sendintr()  # Ctrl-C at the prompt leaves
    chat.expect(pexpect.EOF)


def test_the_session_keeps_the_system_prompt_when_turns_go() -> None:
    session = Session("m", system="be brief")
    session.turns = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                     {"role": "user", "content": "c"}]
    assert session.drop_oldest_turn()
    assert session.messages() == [{"role": "system", "content": "be brief"},
                                  {"role": "user", "content": "c"}]
    assert not session.drop_oldest_turn()
    assert session.command("/set temperature 0.5") == "(temperature = 0.5)"
    assert session.body()["temperature"] == 0.5
    assert session.command("/bye") is None
