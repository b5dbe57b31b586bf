"""The services as the rest of the project sees them: one registry of typed specs (services/__init__.py)."""

from __future__ import annotations

import pytest
from pydantic_settings import BaseSettings

from services import SERVICE_NAMES, spec
from wafl.bus.settings import ServiceSettings
from wafl.bus.topology import SUBSCRIPTIONS, Topology

SERVICES = SERVICE_NAMES


def test_the_registry_lists_the_five_services_in_start_order() -> None:
    assert SERVICE_NAMES == ("chain_watcher", "trainer", "prover", "submitter", "metrics")
    with pytest.raises(KeyError, match="unknown service 'miner'; services: chain_watcher, trainer"):
        spec("miner")


@pytest.mark.parametrize("service", SERVICES)
def test_each_spec_names_its_folder_its_settings_and_its_start(service: str) -> None:
    found = spec(service)
    assert found.name == service
    assert found.serve.__module__ == f"services.{service}.app"
    assert issubclass(found.settings, ServiceSettings) and issubclass(found.settings, BaseSettings)
    assert found.title == "WaFL " + service.replace("_", " ")
    assert found.subscriptions == SUBSCRIPTIONS.get(service, ())


@pytest.mark.parametrize("service", SERVICES)
def test_every_subscriber_consumes_a_declared_queue(service: str) -> None:
    app = spec(service).example_app()
    topology = Topology("example")
    declared = {q.name: q for q in topology.consumer_queues()}
    subscribed = {s.queue.name for s in app.broker.subscribers}
    consumed = subscribed - {topology.prover_jobs.name}
    assert consumed == {q for q in declared if q.startswith(f"wafl.example.{service}.")}
    assert len(SUBSCRIPTIONS.get(service, ())) == len(consumed)
