"""The submitter as a FastStream app and a plain process (`wafl run submitter`)."""

from __future__ import annotations

import asyncio

from faststream import FastStream
from web3 import Web3

from services.submitter.decisions import Submitter
from services.submitter.handlers import SERVICE, SubmitterState, register
from services.submitter.keys import load_account
from services.submitter.settings import SubmitterSettings
from wafl.bus.logs import configure_logging, get_logger
from wafl.bus.observability import serve_metrics
from wafl.bus.service import ServiceSpec, StartupError, announce_start, make_app, make_runtime, preflight
from wafl.chain.aggregator import AggregatorClient

EXAMPLE = SubmitterSettings(org="example")


def create_app(settings: SubmitterSettings = EXAMPLE, state: SubmitterState | None = None) -> FastStream:
    runtime = make_runtime(settings, SERVICE)
    register(runtime, state or SubmitterState())
    return make_app(runtime)


def check_participant(aggregator: AggregatorClient, address: str) -> int:
    """StartupError unless ``address`` holds PARTICIPANT_ROLE; returns its balance in wei."""
    functions = aggregator.contract.functions
    try:
        role = functions.PARTICIPANT_ROLE().call()
        registered = bool(functions.hasRole(role, address).call())
        balance = int(aggregator.w3.eth.get_balance(Web3.to_checksum_address(address)))
    except Exception as exc:
        raise StartupError(f"cannot read the aggregator's participants: {type(exc).__name__}: {exc}") from None
    if not registered:
        raise StartupError(
            f"the signing key's address {address} is not a registered participant of the aggregator at "
            f"{aggregator.deployment.address}: ask the federation's admin to register it, or check the key "
            "(WAFL_KEY_FILE or WAFL_KEYSTORE)"
        )
    return balance


async def serve(settings: SubmitterSettings) -> None:
    configure_logging(SERVICE, settings.org, settings.log_level)
    account, warnings = load_account(settings)  # before anything else: no network needed to refuse a bad key
    deployment, w3 = await preflight(settings)
    assert w3 is not None
    aggregator = AggregatorClient(w3, deployment)
    balance = await asyncio.to_thread(check_participant, aggregator, account.address)
    log = get_logger()
    for warning in warnings:
        log.warning("key_file_permissions", detail=warning)
    if balance == 0:
        log.warning("no_funds", address=account.address, detail="the signing address holds no ether for gas")
    runtime = make_runtime(settings, SERVICE)
    state = SubmitterState(Submitter(aggregator, account, runtime.redis, runtime.key(), settings.org,
                                     settings.policy()))
    register(runtime, state)
    app = make_app(runtime)
    port = serve_metrics(settings.metrics_port)
    announce_start(app, metrics_port=port, address=account.address, aggregator=deployment.address,
             balance_wei=balance)
    await app.run()


SPEC = ServiceSpec(SERVICE, SubmitterSettings, create_app, serve)
