"""The committed AsyncAPI documents (docs/asyncapi/) are what `faststream docs gen` renders now."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from services import SERVICE_NAMES

DOCS = Path(__file__).resolve().parents[2] / "docs" / "asyncapi"
SERVICES = SERVICE_NAMES


@pytest.mark.parametrize("service", SERVICES)
def test_asyncapi_document_is_up_to_date(service: str, tmp_path: Path) -> None:
    out = tmp_path / f"{service}.yaml"
    faststream = Path(sys.executable).with_name("faststream")
    proc = subprocess.run(
        [str(faststream), "docs", "gen", "--factory", f"services.{service}.app:create_app", "--yaml",
         "--out", str(out)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    committed = DOCS / f"{service}.yaml"
    assert committed.exists(), f"{committed} is missing: run `make docs` and commit it"
    spec = yaml.safe_load(committed.read_text())
    # Compared as parsed documents: FastStream orders some subscribers differently run to run.
    assert spec == yaml.safe_load(out.read_text()), f"{committed} is stale: run `make docs` and commit it"
    # Every channel carries a message whose payload is one of our pydantic schemas.
    assert spec["channels"], "no channels documented"
    schemas = spec["components"]["schemas"]
    assert any("schema_version" in s.get("properties", {}) for s in schemas.values())


def test_prover_jobs_never_touch_the_public_exchange() -> None:
    trainer = yaml.safe_load((DOCS / "trainer.yaml").read_text())
    jobs = [c for c in trainer["channels"].values() if c["address"].endswith(".prover.jobs")]
    assert len(jobs) == 1
    binding = jobs[0]["bindings"]["amqp"]
    # Through the default exchange, straight to the work queue: never the public topic exchange.
    assert binding["exchange"]["type"] == "default"
    assert "name" not in binding["exchange"]
