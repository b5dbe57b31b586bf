"""Shared fixtures: circuits are built once per session; anvil starts from the pinned npm package."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3

from tests.support.brokers import delete_org, unique_org
from wafl.chain.anvil import Anvil, fund
from wafl.core.config import ModelConfig, load_config
from wafl.zk.build import CircuitBuild, build_circuit
from wafl.zk.prover import Prover


@pytest.fixture(scope="session")
def ref_config() -> ModelConfig:
    return load_config("ref-9x6-b10")


@pytest.fixture(scope="session")
def ref_build(ref_config: ModelConfig) -> CircuitBuild:
    return build_circuit(ref_config)


@pytest.fixture(scope="session")
def ref_worker(ref_build: CircuitBuild) -> Iterator[Prover]:
    with Prover(ref_build) as worker:
        yield worker


@pytest.fixture(scope="module")
def anvil() -> Iterator[Anvil]:
    with Anvil() as node:
        yield node


@pytest.fixture(scope="module")
def w3(anvil: Anvil) -> Web3:
    return anvil.web3()


def new_account(w3: Web3) -> LocalAccount:
    """A fresh random key funded by anvil's cheat code: no key material lives in the code."""
    account: LocalAccount = Account.create()
    fund(w3, account.address)
    return account


@pytest.fixture()
def org() -> Iterator[str]:
    """A fresh organisation name; its queues, exchanges and Redis keys are removed afterwards."""
    name = unique_org()
    yield name
    asyncio.run(delete_org(name))
