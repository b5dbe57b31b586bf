"""Error handling of the prover (wafl.zk.prover.Prover over circuits/worker.mjs and wafl.zk.native_prover).

What the client does, and these tests hold it to:
- a proof that does not verify under the key set's verification key is never returned;
- a request the worker rejects (bad arguments, unsatisfied witness) is answered with an error
  and the same Node process keeps serving;
- a timeout kills the worker (a wasm proof cannot be interrupted); the next call starts a new one;
- a worker that died between calls is restarted transparently by the next call, provided its
  exit can already be waited for (``start`` polls the process); one that dies during a call (or
  whose exit is not yet observable when the next call starts) makes that call raise
  ProverCrashedError, and the call after it starts a new worker;
- a build directory without its artifacts is refused before Node is started; a key set made for
  another circuit, or the snarkjs backend without a zkey, before anything starts.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from wafl.core.config import load_config
from wafl.core.fixedpoint import Weights, train_step
from wafl.zk.build import CircuitBuild, build_circuit, development_keys
from wafl.zk.circuit import CircuitKind, witness_args
from wafl.zk.keys import VERIFICATION_KEY, load_keys, make_development_keys, write_meta
from wafl.zk.prover import (
    Backend,
    InvalidProofError,
    Prover,
    ProverArgumentError,
    ProverCrashedError,
    ProverError,
    ProverTimeoutError,
    UnsatisfiedConstraintError,
)

CONFIG = "ref-9x6-b10"


@pytest.fixture(scope="module")
def build() -> CircuitBuild:
    return build_circuit(load_config(CONFIG), CircuitKind.PACKED)


@pytest.fixture(scope="module")
def worker(build: CircuitBuild) -> Iterator[Prover]:
    with Prover(build) as started:
        yield started


@pytest.fixture
def fresh_worker(build: CircuitBuild) -> Iterator[Prover]:
    """A worker of its own, for the tests that stop or kill it."""
    with Prover(build) as started:
        yield started


def make_args(round_id: int) -> list[object]:
    """Valid witness arguments: a small deterministic model and batch, stepped by the reference."""
    cfg = load_config(CONFIG)
    g = Weights.from_flat(cfg, [(7 * i) % 201 - 100 for i in range(cfg.n_weights)])
    x = [[(13 * i + 5 * j) % 1001 - 500 for j in range(cfg.d_in)] for i in range(cfg.batch)]
    y = [[int(k == i % cfg.d_out) for k in range(cfg.d_out)] for i in range(cfg.batch)]
    update = train_step(cfg, g, x, y)
    return witness_args(cfg, CircuitKind.PACKED, g, update, x, y, sender=0xC0FFEE, round_id=round_id)


def wait_until_reapable(pid: int, timeout: float = 10.0) -> None:
    """Until the killed child can be waited for (without reaping it): then ``Popen.poll`` sees it.

    /proc showing a zombie is not enough: the leader of a multi-threaded process (node) turns
    "Z" before its other threads are gone, and waitpid reports it only after they are.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            return
        time.sleep(0.01)
    raise AssertionError(f"process {pid} did not exit")


# ---- one process, many jobs -------------------------------------------------------------------
def test_one_process_proves_several_jobs(worker: Prover) -> None:
    pid = worker.pid
    assert pid is not None and worker.ping()["pid"] == pid
    for round_id in (1, 2, 3):
        result = worker.prove(make_args(round_id))
        assert result.inputs[load_config(CONFIG).n_words] == round_id
        assert worker.verify(result.proof, result.inputs)
        assert worker.pid == pid
    assert worker.ping()["pid"] == pid


# ---- rejected requests keep the worker -----------------------------------------------------------
def _replace(index: int, value: object) -> list[object]:
    args = make_args(1)
    args[index] = value
    return args


BAD_ARGUMENTS = [
    pytest.param(make_args(1)[:5], ProverArgumentError, "Expected 8 inputs, found 5", id="too-few-inputs"),
    pytest.param(_replace(5, ["0"] * 5), ProverArgumentError, "Expected array of size 6", id="short-array"),
    pytest.param(_replace(4, "0"), ProverArgumentError, "Type error", id="scalar-for-matrix"),
    pytest.param(_replace(1, "1.5"), ProverArgumentError, "Could not parse `1.5`", id="not-a-field"),
    pytest.param(_replace(1, "-1"), ProverArgumentError, "Could not parse `-1`", id="negative-string"),
    pytest.param({"round": "1"}, ProverArgumentError, "witness needs {args, wtns_path}", id="not-a-list"),
    pytest.param(_replace(1, str(1 << 64)), UnsatisfiedConstraintError, "Execution failed", id="unsatisfied"),
    pytest.param(_replace(1, 1), ProverArgumentError, "isn't allowed", id="number-not-string"),
]


@pytest.mark.parametrize(("args", "error", "message"), BAD_ARGUMENTS)
def test_rejected_request_keeps_the_worker(
    worker: Prover, args: list[object], error: type[ProverError], message: str
) -> None:
    pid = worker.pid
    with pytest.raises(ProverError) as raised:
        worker.prove(args)  # type: ignore[arg-type]
    assert message in str(raised.value)
    assert isinstance(raised.value, error), f"{type(raised.value).__name__}: {raised.value}"
    assert worker.ping()["pid"] == pid == worker.pid


def test_unknown_method_keeps_the_worker(worker: Prover) -> None:
    pid = worker.pid
    with pytest.raises(ProverArgumentError, match="unknown method"):
        worker._node.call("train", None, 10.0)
    with pytest.raises(ProverArgumentError, match="verify needs"):
        worker._node.call("verify", {"inputs": []}, 10.0)
    assert worker.ping()["pid"] == pid


# ---- timeouts and crashes ------------------------------------------------------------------------
def test_timeout_stops_the_worker_and_the_next_call_starts_another(fresh_worker: Prover) -> None:
    old = fresh_worker.pid
    assert old is not None
    with pytest.raises(ProverTimeoutError, match="no answer"):
        fresh_worker.prove(make_args(1), timeout=0.001)
    assert fresh_worker.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(old, 0)  # killed and reaped
    result = fresh_worker.prove(make_args(2))
    assert fresh_worker.pid not in (None, old)
    assert fresh_worker.verify(result.proof, result.inputs)


def test_worker_killed_between_calls_is_restarted(fresh_worker: Prover) -> None:
    old = fresh_worker.pid
    assert old is not None
    os.kill(old, signal.SIGKILL)
    wait_until_reapable(old)
    assert fresh_worker.ping()["pid"] == fresh_worker.pid != old


def test_worker_killed_during_a_call_raises_crashed(fresh_worker: Prover) -> None:
    old = fresh_worker.pid
    assert old is not None
    killer = threading.Timer(0.05, os.kill, (old, signal.SIGKILL))  # a witness takes ~0.2 s
    killer.start()
    try:
        with pytest.raises(ProverCrashedError, match="exited"):
            fresh_worker.prove(make_args(1))
    finally:
        killer.cancel()
    assert fresh_worker.pid is None
    assert fresh_worker.ping()["pid"] == fresh_worker.pid != old


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def _kill_once_busy(pid: int, stop: threading.Event) -> None:
    """SIGKILL the process as soon as it uses CPU: the native prover is idle until it proves."""
    idle = _cpu_ticks(pid)
    while not stop.is_set():
        if _cpu_ticks(pid) > idle + 2:
            os.kill(pid, signal.SIGKILL)
            return
        time.sleep(0.002)


def test_native_prover_killed_during_a_proof_raises_crashed(fresh_worker: Prover) -> None:
    fresh_worker.prove(make_args(1))
    native = [pid for pid in fresh_worker.pids if pid != fresh_worker.pid]
    assert len(native) == 1
    stop = threading.Event()
    killer = threading.Thread(target=_kill_once_busy, args=(native[0], stop))
    killer.start()
    try:
        with pytest.raises(ProverCrashedError, match="native prover"):
            fresh_worker.prove(make_args(2))
    finally:
        stop.set()
        killer.join()
    result = fresh_worker.prove(make_args(3))
    assert fresh_worker.verify(result.proof, result.inputs)
    assert native[0] not in fresh_worker.pids


# ---- no bad proof leaves the prover ----------------------------------------------------------------
def test_a_proof_that_does_not_verify_is_never_returned(build: CircuitBuild, tmp_path: Path) -> None:
    """A backend proving with keys that are not the verification key's (as a buggy backend
    would produce wrong proofs): every proof is checked by snarkjs and refused."""
    honest = development_keys(build)
    other = make_development_keys(build.r1cs, tmp_path / "other", config=CONFIG,
                                  circuit_sha256=build.circuit_sha256)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    shutil.copy(other.directory / "proving_key.g16", mixed / "proving_key.g16")
    shutil.copy(honest.directory / VERIFICATION_KEY, mixed / VERIFICATION_KEY)
    write_meta(mixed, {k: v for k, v in honest.meta.items() if k != "format"})
    with Prover(build, load_keys(mixed)) as prover, pytest.raises(InvalidProofError, match="not published"):
        prover.prove(make_args(1))


def test_snarkjs_backend_needs_a_zkey(build: CircuitBuild) -> None:
    with pytest.raises(ProverError, match=r"needs a circuit\.zkey"):
        Prover(build, development_keys(build), backend=Backend.SNARKJS)


def test_keys_of_another_circuit_are_refused(build: CircuitBuild) -> None:
    wine = development_keys(build_circuit(load_config("wine-13x3-b16")))
    with pytest.raises(ProverError, match="made for another circuit"):
        Prover(build, wine)


# ---- incomplete builds ---------------------------------------------------------------------------
def test_build_without_program_is_refused(build: CircuitBuild, tmp_path: Path) -> None:
    for name in ("circuit.r1cs", "abi.json", "build.json"):
        shutil.copy(build.directory / name, tmp_path / name)
    worker = Prover(CircuitBuild(build.config, build.kind, tmp_path), development_keys(build))
    with pytest.raises(ProverError, match=r"has no program\.bin"), worker:
        pass
    assert worker.pid is None


def test_keys_without_verification_key_fail_to_start(build: CircuitBuild, tmp_path: Path) -> None:
    keys = development_keys(build)
    copy = tmp_path / "keys"
    shutil.copytree(keys.directory, copy)
    prover = Prover(build, load_keys(copy))
    (copy / VERIFICATION_KEY).unlink()
    with pytest.raises(ProverCrashedError, match=r"failed to start.*verification_key\.json"), prover:
        pass
    assert prover.pid is None
