"""`llmos models plan`: a speed curve measured against the real server (two slot
counts), sized by the server's plan API with the registry's memory estimate."""

from __future__ import annotations

import json

from tests.cli.test_cli import llmos
from tests.conftest import RunningServer


def test_a_plan_from_a_curve_measured_now(llmos_server: RunningServer) -> None:
    done = llmos("models", "plan", "gemma-3-270m", "--rate", "2", "--wait", "1",
                 "--measure", "1,2", "--prompt-tokens", "32", "--output-tokens", "16",
                 "--cv2", "0.25", "--url", llmos_server.url, "-o", "json", timeout=120)
    assert done.returncode == 0, done.stderr
    assert "2 at once: prefill" in done.stderr  # (what it measured)
    answer = json.loads(done.stdout)
    assert {s["slots"] for s in answer["shapes"]} == {1, 2}
    best = answer["cheapest"]
    assert best["replicas"] >= 1 and best["wait_s"] <= 1.0 and best["memory_bytes"] > 0
    assert all(s["memory_bytes"] >= best["memory_bytes"] for s in answer["shapes"])


def test_a_plan_needs_a_curve(llmos_server: RunningServer) -> None:
    done = llmos("models", "plan", "gemma-3-270m", "--rate", "2", "--wait", "1",
                 "--url", llmos_server.url)
    assert done.returncode == 2 and "--curve" in done.stderr
    bad = llmos("models", "plan", "gemma-3-270m", "--rate", "2", "--wait", "1",
                "--curve", "four", "--url", llmos_server.url)
    assert bad.returncode == 2 and "SLOTS:PREFILL_TPS:DECODE_TPS" in bad.stderr


def test_measuring_a_deployment_that_is_not_there_says_so(llmos_server: RunningServer) -> None:
    done = llmos("models", "plan", "gemma-3-270m", "--rate", "2", "--wait", "1",
                 "--measure", "1", "--deployment", "nothing-here", "--url", llmos_server.url)
    assert done.returncode == 1
    assert "could not measure" in done.stderr and "nothing-here" in done.stderr
    assert "Traceback" not in done.stderr
