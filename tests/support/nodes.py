"""Local nodes as others run them: Hardhat's node with its own defaults, and a node that offers
only the standard JSON-RPC methods (no cheat codes), as a public chain's does."""

from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from wafl.chain.hardhat import HardhatNode
from wafl.chain.nodes import free_port


class StockHardhatNode(HardhatNode):
    """`npx hardhat node` as anyone runs it: automine, and a reverting transaction answered with an
    error although it was mined (throwOnTransactionFailures)."""

    throw_on_transaction_failures = True


class StandardMethodsOnly(ThreadingHTTPServer):
    """A JSON-RPC endpoint as a public chain's node answers: the standard namespaces (eth_, net_,
    web3_) are served by the real node behind it, anything else gets geth's "method not found"."""

    def __init__(self, backend: str) -> None:
        self.backend = backend
        super().__init__(("127.0.0.1", free_port()), _Forward)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@contextmanager
def standard_methods_only(backend: str) -> Iterator[StandardMethodsOnly]:
    """A StandardMethodsOnly gateway to `backend`, serving for the length of the block."""
    gateway = StandardMethodsOnly(backend)
    thread = threading.Thread(target=gateway.serve_forever, daemon=True)
    thread.start()
    try:
        yield gateway
    finally:
        gateway.shutdown()
        gateway.server_close()
        thread.join(timeout=10)


class _Forward(BaseHTTPRequestHandler):
    server: StandardMethodsOnly

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        request = json.loads(body)
        if str(request["method"]).split("_")[0] in ("eth", "net", "web3"):
            forwarded = urllib.request.Request(self.server.backend, body, {"Content-Type": "application/json"})
            with urllib.request.urlopen(forwarded, timeout=30) as response:
                answer = response.read()
        else:
            answer = json.dumps({"jsonrpc": "2.0", "id": request["id"], "error": {
                "code": -32601, "message": f"the method {request['method']} does not exist/is not available"}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: object) -> None:
        pass
