"""The native Groth16 prover process: groth16py (arkworks) over one key set.

Run by `wafl.zk.prover.Prover` as a child process (``python -m wafl.zk.native_prover <keys-dir>``) so
that a stuck or crashed native proof can be stopped by killing the process, as the Node worker
can. It loads the proving key once and answers JSON-line requests on stdin:

    {"id", "method": "prove", "args": {"wtns_path"}} -> {"proof": {a, b, c}, "proof_seconds"}
    {"id", "method": "ping"}                        -> {"pid"}

Proofs use the {a, b, c} layout of wafl.zk.prover (0x-hex words, b's coordinates real part first).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from wafl.zk.keys import KeySetError, load_keys


def _load_proving_key(keys_dir: Path) -> Any:
    import groth16py

    keys = load_keys(keys_dir)
    if keys.zkey is not None:
        proving_key, _ = groth16py.import_zkey(str(keys.zkey))
        return proving_key
    assert keys.development_proving_key is not None  # load_keys checked one exists
    return groth16py.ProvingKey.load(str(keys.development_proving_key))


def _proof_json(blob: bytes) -> dict[str, Any]:
    # groth16py returns the Ethereum layout: a, b with each coordinate's imaginary part first, c.
    w = [f"0x{blob[32 * i : 32 * i + 32].hex()}" for i in range(8)]
    return {"a": [w[0], w[1]], "b": [[w[3], w[2]], [w[5], w[4]]], "c": [w[6], w[7]]}


def _send(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m wafl.zk.native_prover <keys-dir>", file=sys.stderr)
        return 2
    try:
        import groth16py

        proving_key = _load_proving_key(Path(argv[0]))
    except (KeySetError, OSError, ImportError, ValueError, RuntimeError) as exc:
        _send({"id": None, "ok": False, "error": {"kind": "startup", "message": str(exc)}})
        return 3
    _send({"id": None, "ok": True, "result": {"ready": True, "groth16py": groth16py.__version__}})
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            request = json.loads(line)
            request_id, method, args = request.get("id"), request.get("method"), request.get("args")
        except (json.JSONDecodeError, AttributeError):
            _send({"id": None, "ok": False, "error": {"kind": "bad_request", "message": "request is not JSON"}})
            continue
        try:
            if method == "ping":
                result: dict[str, Any] = {"pid": os.getpid()}
            elif method == "prove":
                if not isinstance(args, dict) or not isinstance(args.get("wtns_path"), str):
                    raise ValueError("prove needs {wtns_path}")
                started = time.perf_counter()
                blob = groth16py.prove_wtns(proving_key, args["wtns_path"])
                result = {"proof": _proof_json(blob), "proof_seconds": time.perf_counter() - started}
            else:
                raise ValueError(f"unknown method {method!r}")
        except ValueError as exc:
            _send({"id": request_id, "ok": False, "error": {"kind": "bad_request", "message": str(exc)}})
            continue
        except Exception as exc:  # a native failure answers and the process keeps serving
            _send({"id": request_id, "ok": False, "error": {"kind": "internal", "message": str(exc)}})
            continue
        _send({"id": request_id, "ok": True, "result": result})
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
