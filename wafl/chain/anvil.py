"""A local anvil chain from the pinned @foundry-rs/anvil npm package, on a free port."""

from __future__ import annotations

from wafl.chain.nodes import LocalNode, free_port, fund, increase_time
from wafl.core.paths import anvil_binary

# Where they were first defined; they serve every local node (wafl/chain/nodes.py).
__all__ = ["Anvil", "free_port", "fund", "increase_time"]


class Anvil(LocalNode):
    """anvil: automine, or interval mining only with `block_time` (seconds)."""

    name = "anvil"

    def command(self) -> list[str]:
        command = [
            str(anvil_binary()),
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--chain-id", str(self.chain_id),
            # Pinned so that gas figures are reproducible; prices match mainnet since Fusaka.
            "--hardfork", "osaka",
            "--silent",
        ]
        if self.block_time is not None:
            command += ["--block-time", str(self.block_time)]
        return command
