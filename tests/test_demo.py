"""`make demo` works offline and prints a streamed answer that used a tool."""

from __future__ import annotations

import subprocess
import sys

from tests.harness import ROOT


def test_demo_prints_a_streamed_answer_after_a_tool_call() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "scripts.demo"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "[Calling get_weather]" in out
    assert "It is 31°C in Makati" in out
    assert "final event: completed" in out
    assert out.index("[Calling get_weather]") < out.index("It is 31°C")
