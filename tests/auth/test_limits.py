"""The pure decision: a sliding minute from two windows, and which limit refuses first."""

from __future__ import annotations

from llmos.auth.limits import Limits, Spent, decide, headroom, sliding

NOW = 1_000_020.0  # 20 s into a minute window (1_000_020 // 60 * 60 = 999_960 + 60)


def test_the_previous_minute_counts_for_the_part_still_in_the_last_60_s() -> None:
    start = NOW // 60 * 60
    elapsed = NOW - start
    spent = Spent(previous_minute=(60, 600), this_minute=(10, 100))
    requests, tokens = sliding(spent, NOW)
    assert requests == 60 * (1 - elapsed / 60) + 10
    assert tokens == 600 * (1 - elapsed / 60) + 100


def test_each_limit_refuses_with_its_own_words_and_wait() -> None:
    assert decide(Limits(), Spent(this_minute=(10**6, 10**9)), 10**6, NOW, "key k") is None
    busy = decide(Limits(concurrent=2), Spent(in_flight=2), 1, NOW, "key k")
    assert busy and busy.retry_after_s == 1 and "concurrent" in busy.message
    rpm = decide(Limits(rpm=5), Spent(this_minute=(5, 0)), 1, NOW, "key k")
    assert rpm and rpm.kind == "requests" and 1 <= rpm.retry_after_s <= 60
    assert decide(Limits(rpm=6), Spent(this_minute=(5, 0)), 1, NOW, "key k") is None
    tokens = decide(Limits(tpm=100), Spent(this_minute=(1, 90)), 20, NOW, "project p")
    assert tokens and tokens.kind == "tokens" and "project p" in tokens.message
    alone = decide(Limits(tpm=100), Spent(), 101, NOW, "key k")
    assert alone and "lower max_tokens" in alone.message
    day = decide(Limits(tokens_per_day=50), Spent(today_tokens=50), 1, NOW, "key k")
    assert day and day.retry_after_s > 60 and "today" in day.message


def test_headroom_for_the_headers() -> None:
    room = headroom(Limits(rpm=10, tpm=1000), Spent(this_minute=(3, 250)), NOW)
    assert (room.limit_requests, room.remaining_requests) == (10, 7)
    assert (room.limit_tokens, room.remaining_tokens) == (1000, 750)
    assert 0 < room.reset_s <= 60
