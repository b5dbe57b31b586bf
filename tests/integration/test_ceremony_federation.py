"""A federation on its own keys, end to end, through the commands organisations run.

The smallest configuration (iris, 2^11 phase 1): a local phase 1, three organisations contribute
in turn, anyone verifies, the beacon finalises; `wafl deploy --keys` on anvil records the key and
transcript hashes; each organisation runs `wafl attest` with its own contribution hash, and round
1 opens only with the last; then every service of every organisation runs as a process on those
keys and one round is accepted and finalised. A proof under the development keys of this machine
(whoever made a setup can forge with it) is rejected by the ceremony-keyed deployment.
"""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.updates import make_update
from tools.localnet import federation
from wafl.chain.tx import ContractRevertError
from wafl.core.config import load_config
from wafl.zk.build import build_circuit, development_keys
from wafl.zk.ceremony import local_phase1, required_power
from wafl.zk.keys import load_keys
from wafl.zk.prover import Prover

CONFIG = "iris-4x3-b3"
ORGS = ("org-a", "org-b", "org-c")
BEACON = "0x" + "5e" * 32  # in production: the hash of a block agreed before the ceremony


def wafl(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "tools.cli", *args], capture_output=True, text=True, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.mark.slow
def test_ceremony_keys_deploy_attest_and_a_round_on_them(tmp_path: Path) -> None:
    cfg = load_config(CONFIG)
    build = build_circuit(cfg)
    power = required_power(build.r1cs)
    assert power == 11  # why this configuration is CI's ceremony
    ptau = local_phase1(power)

    # ---- phase 2: init, three organisations in turn, the beacon --------------------------------
    wafl("ceremony", "init", "--config", CONFIG, "--ptau", str(ptau), "--out", str(tmp_path / "step0"))
    mine: dict[str, str] = {}
    previous = tmp_path / "step0"
    for index, org in enumerate(ORGS, start=1):
        out = tmp_path / f"step{index}"
        proc = wafl("ceremony", "contribute", "--in", str(previous), "--out", str(out), "--name", org)
        hashes = re.findall(r"\b[0-9a-f]{128}\b", proc.stdout)  # a 64-byte contribution hash
        assert hashes, proc.stdout
        mine[org] = hashes[0]
        previous = out
    listed = wafl("ceremony", "verify", "--dir", str(previous), "--config", CONFIG, "--ptau", str(ptau)).stdout
    for org in ORGS:
        assert org in listed and mine[org] in listed
    final = tmp_path / "final"
    wafl("ceremony", "finalize", "--in", str(previous), "--out", str(final), "--beacon", BEACON,
         "--config", CONFIG, "--ptau", str(ptau))
    keys = load_keys(final)
    assert not keys.is_development
    assert [c["name"] for c in keys.meta["contributions"]][:3] == list(ORGS)

    with federation(cfg, tmp_path, org_count=3, keys=keys, attest=False) as fed:
        deployment = fed.deployment
        assert (deployment.keys_kind, deployment.vk_hash) == ("ceremony", keys.vk_hash)
        assert deployment.transcript_sha256 == keys.transcript_sha256 is not None
        aggregator = fed.aggregator
        assert aggregator.verification_key_hash() == keys.vk_hash

        # ---- each organisation checks its own contribution and attests ---------------------------
        wrong = wafl("attest", "--deployment", str(fed.deployment_path), "--rpc-url", fed.anvil.url,
                     "--key-file", str(fed.orgs[0].key_file), "--keys", str(final), "--ptau", str(ptau),
                     "--mine", "ab" * 64, check=False)  # a contribution that is not in the keys
        assert wrong.returncode == 2 and "Traceback" not in wrong.stderr, wrong.stderr
        assert len(wrong.stderr.strip().splitlines()) == 1
        for org_name, org in zip(ORGS, fed.orgs, strict=True):
            assert aggregator.current_round().round == 0
            wafl("attest", "--deployment", str(fed.deployment_path), "--rpc-url", fed.anvil.url,
                 "--key-file", str(org.key_file), "--keys", str(final), "--ptau", str(ptau), "--mine", mine[org_name])
            assert aggregator.has_attested(org.account.address)
        assert aggregator.current_round().round == 1

        # ---- a proof under another setup's keys (this machine's development keys) is refused ----
        with Prover(build, development_keys(build)) as forger:
            forged = make_update(cfg, forger, aggregator.global_model(), fed.orgs[0].account.address, 1,
                                 random.Random(1))
        with pytest.raises(ContractRevertError) as rejected:
            aggregator.submit_update(fed.orgs[0].account, 1, forged.words, forged.proof, gas=2_000_000)
        assert rejected.value.name == "Wafl__InvalidProof"

        # ---- one round of the real services on the ceremony's keys ------------------------------
        fed.start_all()
        fed.wait_for_round(1, timeout=240)
        accepted = aggregator.contract.events.UpdateAccepted().get_logs(from_block=deployment.start_block)
        assert sorted(log["args"]["participant"] for log in accepted) == sorted(o.account.address for o in fed.orgs)
        prover_logs = [p.log() for o in fed.orgs for p in o.processes if p.service == "prover"]
        started = [json.loads(line) for log in prover_logs for line in log.splitlines()
                   if '"service_started"' in line]
        assert started and all(keys.vk_hash[:18] in event["keys"] for event in started)
