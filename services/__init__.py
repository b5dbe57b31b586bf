"""The five WaFL services, one folder each (services/<name>/): a thin ``handlers`` module over a
plain core, ``settings``, and ``app`` declaring its :class:`~wafl.bus.service.ServiceSpec`.

SERVICES is the one list of them, in start order (the chain_watcher opens rounds, the metrics
service only listens). The CLI, the simulation, localnet, the AsyncAPI documents, compose and the
Kubernetes manifests take their names from it. Each spec is imported on demand: the trainer
imports torch, which the other services and the CLI's start need not pay for.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from wafl.bus.service import ServiceSpec


def _chain_watcher() -> ServiceSpec[Any]:
    from services.chain_watcher.app import SPEC

    return SPEC


def _trainer() -> ServiceSpec[Any]:
    from services.trainer.app import SPEC

    return SPEC


def _prover() -> ServiceSpec[Any]:
    from services.prover.app import SPEC

    return SPEC


def _submitter() -> ServiceSpec[Any]:
    from services.submitter.app import SPEC

    return SPEC


def _metrics() -> ServiceSpec[Any]:
    from services.metrics.app import SPEC

    return SPEC


SERVICES: dict[str, Callable[[], ServiceSpec[Any]]] = {
    "chain_watcher": _chain_watcher,
    "trainer": _trainer,
    "prover": _prover,
    "submitter": _submitter,
    "metrics": _metrics,
}
SERVICE_NAMES = tuple(SERVICES)


def spec(name: str) -> ServiceSpec[Any]:
    """The spec of service ``name`` (KeyError names the known ones)."""
    try:
        load = SERVICES[name]
    except KeyError:
        raise KeyError(f"unknown service {name!r}; services: {', '.join(SERVICE_NAMES)}") from None
    return load()
