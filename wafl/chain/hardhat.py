"""A local Hardhat node (Hardhat 2, the pinned npm package) on a free port: the second EVM the
services and `wafl deploy` run on, next to anvil (wafl/chain/anvil.py), with the same interface.

Hardhat 2 starts only from a config file: contracts/hardhat.config.cjs configures the node alone
(chain id, the osaka hardfork anvil runs too, automine or interval mining). It needs no network.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

from wafl.chain.nodes import LocalNode
from wafl.core.paths import CONTRACT_DIR, NODE, NODE_MODULES, PROJECT_ROOT

HARDHAT_CONFIG = CONTRACT_DIR / "hardhat.config.cjs"


def hardhat_cli() -> Path:
    """The Hardhat command-line script of the pinned `hardhat` npm package (run it with node)."""
    package = NODE_MODULES / "hardhat" / "package.json"
    if not package.exists():
        raise FileNotFoundError(
            f"hardhat is not installed under {NODE_MODULES}: run `npm ci` in WAFL_HOME ({PROJECT_ROOT})"
        )
    return package.parent / str(json.loads(package.read_text())["bin"]["hardhat"])


class HardhatNode(LocalNode):
    """`hardhat node`: automine (one block per transaction) unless `block_time` (seconds) asks
    for interval mining, as anvil's --block-time does.

    A reverting transaction is mined and its hash returned, as anvil and geth do. A subclass
    that sets `throw_on_transaction_failures` gets Hardhat's own default instead, what a
    `npx hardhat node` of one's own does: eth_sendRawTransaction answers it with an error.
    """

    name = "hardhat"
    throw_on_transaction_failures: ClassVar[bool] = False

    def command(self) -> list[str]:
        return [
            NODE, str(hardhat_cli()),
            "--config", str(HARDHAT_CONFIG),
            "node",
            "--hostname", "127.0.0.1",
            "--port", str(self.port),
        ]

    def working_directory(self) -> Path:
        # Hardhat refuses to run from outside the project that installed it (HH12).
        return PROJECT_ROOT

    def environment(self) -> Mapping[str, str]:
        env = {
            "WAFL_HARDHAT_CHAIN_ID": str(self.chain_id),
            # Never ask for telemetry consent (it only asks on a terminal, but say so anyway).
            "HARDHAT_DISABLE_TELEMETRY_PROMPT": "true",
        }
        if self.block_time is not None:
            env["WAFL_HARDHAT_BLOCK_TIME_MS"] = str(round(self.block_time * 1000))
        if self.throw_on_transaction_failures:
            env["WAFL_HARDHAT_THROW_ON_TX_FAILURES"] = "true"
        return env
