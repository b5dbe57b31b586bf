"""Python client of the long-lived ZoKrates prover worker (circuits/worker.mjs).

The worker loads a circuit's program and proving key once and proves many jobs. Every way it
can fail becomes one of the exceptions below; a timeout kills the worker (a stuck wasm proof
cannot be interrupted) and the next call starts a fresh one.
"""

from __future__ import annotations

import itertools
import json
import queue
import subprocess
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from wafl.paths import CIRCUIT_DIR, NODE


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


def _hex32(value: int) -> str:
    return f"0x{value:064x}"


_ERRORS: dict[str, type[ProverError]] = {
    "unsatisfied": UnsatisfiedConstraintError,
    "bad_arguments": ProverArgumentError,
    "bad_request": ProverArgumentError,
}


class ZokratesWorker:
    """One Node process holding one circuit; one request at a time (calls are serialised)."""

    def __init__(self, build_dir: Path, startup_timeout: float = 120.0) -> None:
        self.build_dir = Path(build_dir)
        self.startup_timeout = startup_timeout
        self._proc: subprocess.Popen[str] | None = None
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._stderr: deque[str] = deque(maxlen=40)
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    # ---- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            return
        for name in ("program.bin", "pk.bin", "abi.json"):
            if not (self.build_dir / name).exists():
                raise ProverError(f"circuit build {self.build_dir} has no {name}: build it first")
        self._lines = queue.Queue()
        self._proc = subprocess.Popen(
            [NODE, str(CIRCUIT_DIR / "worker.mjs"), str(self.build_dir)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
            # Its own session: a Ctrl-C or SIGTERM for the service does not kill a proof in
            # progress; the service finishes (or returns) its job and then closes the worker.
            start_new_session=True,
        )
        threading.Thread(target=self._pump_stdout, args=(self._proc, self._lines), daemon=True).start()
        threading.Thread(target=self._pump_stderr, args=(self._proc,), daemon=True).start()
        ready = self._read(None, self.startup_timeout)
        if not ready.get("ok"):
            self.close()
            raise ProverCrashedError(f"prover worker failed to start: {ready.get('error')}")

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

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ---- requests ----------------------------------------------------------------------
    def ping(self, timeout: float = 10.0) -> dict[str, Any]:
        return self._call("ping", None, timeout)

    def prove(self, args: list[Any], timeout: float = 300.0) -> ProofResult:
        result = self._call("prove", args, timeout)
        return ProofResult(
            proof=Groth16Proof.from_json(result["proof"]),
            inputs=[int(v, 16) for v in result["inputs"]],
            witness_seconds=float(result["witness_seconds"]),
            proof_seconds=float(result["proof_seconds"]),
        )

    def verify(self, proof: Groth16Proof, inputs: list[int], timeout: float = 60.0) -> bool:
        """Off-chain Groth16 check against the build's verification key."""
        args = {"proof": proof.to_json(), "inputs": [_hex32(v) for v in inputs]}
        return bool(self._call("verify", args, timeout)["valid"])

    def _call(self, method: str, args: list[Any] | dict[str, Any] | None, timeout: float) -> dict[str, Any]:
        with self._lock:
            self.start()
            assert self._proc is not None and self._proc.stdin is not None
            request_id = next(self._ids)
            try:
                self._proc.stdin.write(json.dumps({"id": request_id, "method": method, "args": args}) + "\n")
                self._proc.stdin.flush()
            except (BrokenPipeError, OSError) as exc:
                self.close()
                raise ProverCrashedError(f"prover worker is gone: {exc}; {self._stderr_tail()}") from exc
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
                raise ProverTimeoutError(
                    f"prover worker gave no answer within {timeout:g}s; it was stopped"
                ) from None
            if line is None:
                self.close()
                raise ProverCrashedError(f"prover worker exited; {self._stderr_tail()}")
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
