"""The prover: a witness from ZoKrates' program, a Groth16 proof from a key set, checked.

`Prover` keeps two long-lived child processes per circuit and key set, each loading its keys
once and proving many jobs: the Node worker (circuits/worker.mjs: zokrates-js computes the
witness, snarkjs verifies every proof and is the second proving backend) and, for the default
``groth16py`` backend, the native prover (wafl/zk/native_prover.py, arkworks). No proof leaves
`Prover.prove` unless snarkjs has verified it against the key set's verification key: a
backend bug can cost a job, never put a bad proof on chain. Every way a child can fail becomes
one of the exceptions below; a timeout kills the child (a stuck proof cannot be interrupted)
and the next call starts a fresh one.
"""

from __future__ import annotations

import itertools
import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from wafl.core.paths import CIRCUIT_DIR, NODE
from wafl.zk.keys import KeySet

if TYPE_CHECKING:
    from wafl.zk.build import CircuitBuild


class ProverError(RuntimeError):
    """Base of every prover failure."""


class UnsatisfiedConstraintError(ProverError):
    """The arguments do not satisfy the circuit (tampered weights, out-of-range data, ...)."""


class ProverArgumentError(ProverError):
    """The arguments do not match the circuit's ABI."""


class ProverTimeoutError(ProverError):
    pass


class ProverCrashedError(ProverError):
    pass


class InvalidProofError(ProverError):
    """A backend produced a proof that does not verify: it is never published."""


@dataclass(frozen=True)
class Groth16Proof:
    a: tuple[int, int]
    b: tuple[tuple[int, int], tuple[int, int]]
    c: tuple[int, int]

    def as_uint256x8(self) -> list[int]:
        """The flat layout submitUpdate takes: a, b (as ZoKrates orders it), c."""
        return [*self.a, *self.b[0], *self.b[1], *self.c]

    def to_json(self) -> dict[str, Any]:
        """ZoKrates' own JSON form (0x-prefixed, 32-byte hex)."""
        return {
            "a": [_hex32(v) for v in self.a],
            "b": [[_hex32(v) for v in r] for r in self.b],
            "c": [_hex32(v) for v in self.c],
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Groth16Proof:
        a, b, c = raw["a"], raw["b"], raw["c"]
        return cls(
            a=(int(a[0], 16), int(a[1], 16)),
            b=((int(b[0][0], 16), int(b[0][1], 16)), (int(b[1][0], 16), int(b[1][1], 16))),
            c=(int(c[0], 16), int(c[1], 16)),
        )


@dataclass(frozen=True)
class ProofResult:
    proof: Groth16Proof
    inputs: list[int]
    witness_seconds: float
    proof_seconds: float
    verify_seconds: float = 0.0


def _hex32(value: int) -> str:
    return f"0x{value:064x}"


_ERRORS: dict[str, type[ProverError]] = {
    "unsatisfied": UnsatisfiedConstraintError,
    "bad_arguments": ProverArgumentError,
    "bad_request": ProverArgumentError,
}


class Backend(StrEnum):
    """Who computes the proof; snarkjs verifies it either way."""

    GROTH16PY = "groth16py"  # native arkworks, one core: the default
    SNARKJS = "snarkjs"  # the second backend: needs the key set's circuit.zkey


class JsonLineProcess:
    """One child process answering JSON-line requests; calls are serialised."""

    def __init__(
        self, command: Sequence[str], name: str, startup_timeout: float = 120.0, cores: int | None = None
    ) -> None:
        self.command = list(command)
        self.name = name
        self.startup_timeout = startup_timeout
        self.cores = cores
        self._proc: subprocess.Popen[str] | None = None
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._stderr: deque[str] = deque(maxlen=40)
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def start(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            return
        self._lines = queue.Queue()
        cores = self.cores
        self._proc = subprocess.Popen(
            self.command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
            # Its own session: a Ctrl-C or SIGTERM for the service does not kill a proof in
            # progress; the service finishes (or returns) its job and then closes the worker.
            start_new_session=True,
            preexec_fn=(lambda: _pin(cores)) if cores else None,
        )
        threading.Thread(target=self._pump_stdout, args=(self._proc, self._lines), daemon=True).start()
        threading.Thread(target=self._pump_stderr, args=(self._proc,), daemon=True).start()
        ready = self._read(None, self.startup_timeout)
        if not ready.get("ok"):
            self.close()
            error = ready.get("error") or {}
            raise ProverCrashedError(f"{self.name} failed to start: {error.get('message', error)}")

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def call(self, method: str, args: list[Any] | dict[str, Any] | None, timeout: float) -> dict[str, Any]:
        with self._lock:
            self.start()
            assert self._proc is not None and self._proc.stdin is not None
            request_id = next(self._ids)
            try:
                self._proc.stdin.write(json.dumps({"id": request_id, "method": method, "args": args}) + "\n")
                self._proc.stdin.flush()
            except (BrokenPipeError, OSError) as exc:
                self.close()
                raise ProverCrashedError(f"{self.name} is gone: {exc}; {self._stderr_tail()}") from exc
            reply = self._read(request_id, timeout)
        if reply.get("ok"):
            result: dict[str, Any] = reply["result"]
            return result
        error = reply.get("error") or {}
        kind = str(error.get("kind", "internal"))
        raise _ERRORS.get(kind, ProverError)(f"{kind}: {error.get('message', 'no message')}")

    def _read(self, request_id: int | None, timeout: float) -> dict[str, Any]:
        while True:
            try:
                line = self._lines.get(timeout=timeout)
            except queue.Empty:
                self.close()
                raise ProverTimeoutError(f"{self.name} gave no answer within {timeout:g}s; it was stopped") from None
            if line is None:
                self.close()
                raise ProverCrashedError(f"{self.name} exited; {self._stderr_tail()}")
            try:
                reply: dict[str, Any] = json.loads(line)
            except json.JSONDecodeError:
                continue  # a stray print from a dependency; replies are JSON objects
            if reply.get("id") == request_id:
                return reply

    def _stderr_tail(self) -> str:
        tail = " | ".join(self._stderr)
        return f"stderr: {tail[-1500:]}" if tail else "no stderr"

    @staticmethod
    def _pump_stdout(proc: subprocess.Popen[str], lines: queue.Queue[str | None]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    def _pump_stderr(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            self._stderr.append(line.rstrip())


def _pin(cores: int) -> None:
    """Keep a child on the first `cores` of the cores this process may use (one per replica)."""
    allowed = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, allowed[:cores])


class Prover:
    """Witness (zokrates-js), proof (the backend), check (snarkjs) for one circuit and key set."""

    def __init__(
        self,
        build: CircuitBuild,
        keys: KeySet | None = None,
        backend: Backend | str = Backend.GROTH16PY,
        startup_timeout: float = 120.0,
        cores: int | None = None,
        zokrates_proving_key: Path | None = None,
    ) -> None:
        from wafl.zk.build import development_keys

        self.build = build
        self.keys = keys if keys is not None else development_keys(build)
        self.backend = Backend(backend)
        if self.keys.circuit_sha256 != build.circuit_sha256:
            raise ProverError(
                f"the key set {self.keys.directory} was made for another circuit "
                f"({self.keys.circuit_sha256[:16]}, this build is {build.circuit_sha256[:16]})"
            )
        if self.backend is Backend.SNARKJS and self.keys.zkey is None:
            raise ProverError(f"the snarkjs backend needs a circuit.zkey; {self.keys.directory} has none")
        node_command = [NODE, str(CIRCUIT_DIR / "worker.mjs"), str(build.directory), str(self.keys.directory)]
        if zokrates_proving_key is not None:
            node_command.append(str(zokrates_proving_key))
        self._node = JsonLineProcess(node_command, "prover worker (node)", startup_timeout, cores)
        self._native = (
            JsonLineProcess(
                [sys.executable, "-m", "wafl.zk.native_prover", str(self.keys.directory)],
                "native prover (groth16py)",
                startup_timeout,
                cores,
            )
            if self.backend is Backend.GROTH16PY
            else None
        )
        self._scratch: Path | None = None

    # ---- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        for name in ("program.bin", "abi.json"):
            if not (self.build.directory / name).exists():
                raise ProverError(f"circuit build {self.build.directory} has no {name}: build it first")
        if self._scratch is None:
            # Witnesses hold the private training batch: a directory only this user can read.
            self._scratch = Path(tempfile.mkdtemp(prefix="wafl-witness-"))
        self._node.start()
        if self._native is not None:
            self._native.start()

    def close(self) -> None:
        self._node.close()
        if self._native is not None:
            self._native.close()
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None

    @property
    def pid(self) -> int | None:
        """The Node worker's pid (what a crash test kills)."""
        return self._node.pid

    @property
    def pids(self) -> list[int]:
        return [p for p in (self._node.pid, self._native.pid if self._native else None) if p is not None]

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ---- requests ----------------------------------------------------------------------
    def ping(self, timeout: float = 10.0) -> dict[str, Any]:
        return self._node.call("ping", None, timeout)

    def prove(self, args: list[Any], timeout: float = 300.0) -> ProofResult:
        """Witness, proof, verification; raises InvalidProofError rather than return a bad proof."""
        self.start()
        assert self._scratch is not None
        wtns = self._scratch / f"job-{next(_JOB_IDS)}.wtns"
        try:
            witness = self._node.call("witness", {"args": args, "wtns_path": str(wtns)}, timeout)
            inputs = [int(v, 16) for v in witness["inputs"]]
            worker = self._native if self._native is not None else self._node
            proved = worker.call("prove", {"wtns_path": str(wtns)}, timeout)
        finally:
            wtns.unlink(missing_ok=True)
        proof = Groth16Proof.from_json(proved["proof"])
        checked = self._node.call("verify", {"proof": proof.to_json(), "inputs": [_hex32(v) for v in inputs]}, 60.0)
        if not checked["valid"]:
            raise InvalidProofError(f"the {self.backend} backend produced a proof that does not verify; not published")
        return ProofResult(
            proof=proof,
            inputs=inputs,
            witness_seconds=float(witness["witness_seconds"]),
            proof_seconds=float(proved["proof_seconds"]),
            verify_seconds=float(checked.get("seconds", 0.0)),
        )

    def prove_zokrates(self, args: list[Any], timeout: float = 300.0) -> ProofResult:
        """zokrates-js' own prover on its own setup (the benchmark's baseline)."""
        result = self._node.call("prove_zokrates", args, timeout)
        return ProofResult(
            proof=Groth16Proof.from_json(result["proof"]),
            inputs=[int(v, 16) for v in result["inputs"]],
            witness_seconds=float(result["witness_seconds"]),
            proof_seconds=float(result["proof_seconds"]),
        )

    def verify(self, proof: Groth16Proof, inputs: list[int], timeout: float = 60.0) -> bool:
        """Off-chain Groth16 check (snarkjs) against the key set's verification key."""
        args = {"proof": proof.to_json(), "inputs": [_hex32(v) for v in inputs]}
        return bool(self._node.call("verify", args, timeout)["valid"])


_JOB_IDS = itertools.count(1)
