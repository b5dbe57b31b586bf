"""A local node's start never leaves its process behind: when the node exits at start, does not
answer in time, or the wait is interrupted, start() stops it before raising. The "node" is a
Python process that never opens its port (no chain needed); the processes a test started are
found by a marker in their environment."""

from __future__ import annotations

import signal
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from types import FrameType

import pytest

from tests.support.processes import processes_with
from wafl.chain.nodes import LocalNode

MARKER_VARIABLE = "WAFL_LOCAL_NODE_TEST"


class Silent(LocalNode):
    """Runs `script` (by default: sleeps, never listening) with a marker in its environment."""

    name = "silent"
    stop_grace = 1.0

    def __init__(self, script: str = "import time; time.sleep(600)") -> None:
        super().__init__()
        self.script = script
        self.marker = uuid.uuid4().hex

    def command(self) -> list[str]:
        return [sys.executable, "-c", self.script]

    def environment(self) -> Mapping[str, str]:
        return {MARKER_VARIABLE: self.marker}

    def running(self) -> list[str]:
        return processes_with(f"{MARKER_VARIABLE}={self.marker}")


@pytest.fixture()
def alarm() -> Iterator[list[str]]:
    """Arm with `signal.setitimer`; what was running when it fired is appended to the list."""
    seen: list[str] = []
    previous = signal.getsignal(signal.SIGALRM)
    yield seen
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, previous)


def test_a_node_that_never_answers_is_stopped_at_the_timeout() -> None:
    node = Silent()
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=r"silent did not answer on http://127\.0\.0\.1:\d+ within 1\.5s"):
        node.start(timeout=1.5)
    assert time.monotonic() - started < 1.5 + Silent.stop_grace + 2
    assert node.pid is None
    assert node.running() == []


def test_a_node_that_exits_at_start_says_why() -> None:
    node = Silent("import sys; sys.stderr.write('no such hardfork'); sys.exit(3)")
    with pytest.raises(RuntimeError, match=r"silent exited at start \(code 3\): no such hardfork"):
        node.start(timeout=30)
    assert node.pid is None


@pytest.mark.parametrize("interruption", [KeyboardInterrupt, SystemExit])
def test_an_interrupted_start_stops_the_node(alarm: list[str], interruption: type[BaseException]) -> None:
    """Ctrl-C (or SIGTERM, which the CLI turns into KeyboardInterrupt) while waiting for the RPC."""
    node = Silent()

    def interrupt(signum: int, frame: FrameType | None) -> None:
        alarm.extend(node.running())
        raise interruption

    signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 1.0)
    with pytest.raises(interruption):
        node.start(timeout=60)
    assert len(alarm) == 1 and "time.sleep(600)" in alarm[0]  # it was running when interrupted
    assert node.pid is None
    assert node.running() == []


def test_a_node_that_ignores_sigterm_is_killed() -> None:
    node = Silent("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)")
    with pytest.raises(TimeoutError):
        node.start(timeout=1)
    assert node.running() == []


def test_a_second_interrupt_while_stopping_still_kills_the_node(alarm: list[str]) -> None:
    """Ctrl-C at start, and again while the stop waits for a node that ignores SIGTERM: killed."""
    node = Silent("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)")
    node.stop_grace = 30.0

    def interrupt(signum: int, frame: FrameType | None) -> None:
        alarm.append("interrupt")
        if len(alarm) == 2:
            signal.setitimer(signal.ITIMER_REAL, 0)
        raise KeyboardInterrupt

    signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 1.0, 1.0)  # at 1 s (waiting for the RPC), then at 2 s (stopping)
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        node.start(timeout=60)
    assert alarm == ["interrupt", "interrupt"]
    assert time.monotonic() - started < 10  # not the 30 s grace
    assert node.running() == []
