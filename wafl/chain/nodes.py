"""What every local development node shares (anvil, Hardhat): a subprocess on a free port that is
up once it answers eth_chainId, and the cheat codes that fund an account without a key."""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import IO, Any, ClassVar, Self

from web3 import HTTPProvider, Web3

# Cheat codes that set an account's balance, tried in this order. anvil answers both; Hardhat
# only its own; a public chain neither.
SET_BALANCE_METHODS = ("anvil_setBalance", "hardhat_setBalance")
# "Method not found" (JSON-RPC 2.0: anvil, geth) and "method not supported" (EIP-1474: Hardhat).
_UNKNOWN_METHOD_CODES = frozenset({-32601, -32004})
DEFAULT_FUNDS = 10**21


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class LocalNode(ABC):
    """Start a node, wait until it answers, stop it (also on error) as a context manager.

    A subclass names itself and gives its command line (and environment, if any).
    """

    name = "node"
    # Seconds a node has to exit after SIGTERM before it is killed.
    stop_grace: ClassVar[float] = 10.0

    def __init__(
        self,
        port: int | None = None,
        chain_id: int = 31337,
        block_time: float | None = None,
        extra_args: list[str] | None = None,
    ) -> None:
        self.port = port or free_port()
        self.chain_id = chain_id
        self.block_time = block_time
        self.extra_args = list(extra_args or [])
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None

    @abstractmethod
    def command(self) -> list[str]:
        """The node's command line (each node's own flags)."""

    def environment(self) -> Mapping[str, str]:
        """Variables added to this process's environment for the node."""
        return {}

    def working_directory(self) -> Path | None:
        """Where the node runs (None: this process's working directory)."""
        return None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        """Start the node and wait until it answers with its chain id.

        Whatever ends the start early (the node exits, does not answer within `timeout`, an
        interrupt or an error while waiting) stops the node before it propagates: nothing is left
        running.
        """
        try:
            self._launch()
            self._wait_until_up(timeout)
        except BaseException:
            self.stop()
            raise

    def _launch(self) -> None:
        # stderr goes to a file, not a pipe: a chatty node never blocks on a full pipe. It lives as
        # long as the node and is closed by stop().
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115
        self._proc = subprocess.Popen(
            [*self.command(), *self.extra_args],
            stdout=subprocess.DEVNULL,
            stderr=self._stderr,
            env={**os.environ, **self.environment()},
            cwd=self.working_directory(),
        )

    def _wait_until_up(self, timeout: float) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        w3 = self.web3()
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited at start (code {self._proc.returncode}): "
                                   f"{self._stderr_text()}")
            try:
                if w3.eth.chain_id == self.chain_id:
                    return
            except Exception:  # not listening yet
                time.sleep(0.05)
        raise TimeoutError(f"{self.name} did not answer on {self.url} within {timeout}s")

    def _stderr_text(self, keep: int = 400) -> str:
        """Its error output: the start (what went wrong) and the end (where), if long."""
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        text = self._stderr.read().decode(errors="replace").strip()
        return text if len(text) <= 2 * keep else f"{text[:keep]} [...] {text[-keep:]}"

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        stderr, self._stderr = self._stderr, None
        try:
            if proc is not None:
                _end(proc, self.stop_grace)
        finally:
            if stderr is not None:
                stderr.close()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def web3(self) -> Web3:
        return Web3(HTTPProvider(self.url, request_kwargs={"timeout": 60}))

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _end(proc: subprocess.Popen[bytes], grace: float) -> None:
    """Terminate, and kill if it has not exited within `grace` seconds or if the wait is
    interrupted (a second Ctrl-C): the process is gone when this returns or raises."""
    try:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


class FundsNeededError(RuntimeError):
    """The node has no balance cheat code: these accounts must be sent ether from a funded one.

    The message names every account and what it lacks, accounts lacking the same grouped, so
    that even nine of them fit one line.
    """

    def __init__(self, endpoint: str, needs: Mapping[str, int], then: str = "start again") -> None:
        self.endpoint = endpoint
        self.needs = dict(needs)  # address -> the wei it lacks
        by_amount: dict[int, list[str]] = {}
        for address, wei in self.needs.items():
            by_amount.setdefault(wei, []).append(address)
        listed = "; ".join(f"{_ether(wei)} {'each ' if len(group) > 1 else ''}to {', '.join(group)}"
                           for wei, group in by_amount.items())
        super().__init__(
            f"the node at {endpoint} has no balance cheat code ({' or '.join(SET_BALANCE_METHODS)}): "
            f"send {listed} (from a funded account), then {then}"
        )


def _ether(wei: int) -> str:
    text = f"{Decimal(wei).scaleb(-18):f}"
    return f"{text.rstrip('0').rstrip('.') if '.' in text else text} ETH"


def set_balance_method(w3: Web3, address: str, wei: int = DEFAULT_FUNDS) -> str | None:
    """Set `address`'s balance by the first cheat code the node knows; its name, or None if none."""
    for method in SET_BALANCE_METHODS:
        response: Any = w3.provider.make_request(method, [address, hex(wei)])  # type: ignore[arg-type]
        error = response.get("error")
        if error is None:
            return method
        if error.get("code") not in _UNKNOWN_METHOD_CODES:
            raise RuntimeError(f"{method}({address}) failed: {error.get('message', error)}")
    return None


def fund(w3: Web3, address: str, wei: int = DEFAULT_FUNDS) -> None:
    """Give a local account ether by the node's cheat code (no key involved).

    On a node without one, raises FundsNeededError naming the address.
    """
    fund_all(w3, [address], wei)


def fund_all(w3: Web3, addresses: Iterable[str], wei: int = DEFAULT_FUNDS) -> None:
    """Fund each account; on a node without a cheat code, name every account holding less than `wei`."""
    short: dict[str, int] = {}
    for address in (Web3.to_checksum_address(a) for a in addresses):
        if set_balance_method(w3, address, wei) is None:
            balance = w3.eth.get_balance(address)
            if balance < wei:
                short[address] = wei - balance
    if short:
        raise FundsNeededError(_endpoint(w3), short)


def increase_time(w3: Web3, seconds: int) -> None:
    """Move the chain's clock on and mine a block at the new time (anvil and Hardhat alike)."""
    for method, params in (("evm_increaseTime", [seconds]), ("evm_mine", [])):
        response: Any = w3.provider.make_request(method, params)  # type: ignore[arg-type]
        if response.get("error") is not None:
            raise RuntimeError(f"{method} failed on {_endpoint(w3)}: {response['error'].get('message')}")


def _endpoint(w3: Web3) -> str:
    return str(getattr(w3.provider, "endpoint_uri", None) or type(w3.provider).__name__)
