"""`wafl configs` and `wafl --help` start fast: building the parser imports none of the heavy
libraries, which the command functions import when they run."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("torch", "sklearn", "web3", "eth_account", "rich", "scipy", "tools.simulate.federation", "services.trainer")


def test_building_the_parser_imports_no_heavy_module() -> None:
    probe = (
        "import json, sys\n"
        "from tools.cli import parser\n"
        "parser()\n"
        f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
    )
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(proc.stdout) == []


def test_configs_runs() -> None:
    proc = subprocess.run([sys.executable, "-m", "tools.cli", "configs"], capture_output=True, text=True,
                          timeout=120, check=True)
    assert "wine-13x3-b16: 13x3" in proc.stdout
