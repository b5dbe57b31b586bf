"""`wafl status` against a real anvil, with real proofs: its JSON equals the chain's state in every
field before round 1, during a round, after a finalisation (by quorum and by deadline) and after a
revocation; the text holds the key facts; `--watch` refreshes in place until SIGINT (exit 130,
nothing left running); bad input is one line, exit status 2.

The expected state is read here straight from the contract at the snapshot's block, and the model
hash recomputed from the global words (keccak256 of the words as 32-byte big-endian integers).
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from eth_account.signers.local import LocalAccount
from web3 import Web3

from tests.conftest import new_account
from tests.support.processes import processes_with
from tests.support.updates import make_update
from tests.unit.test_cli_bad_input import command_env, one_line_exit_2
from tools.cli import main
from tools.status import CLEAR, render
from wafl.chain.aggregator import AggregatorClient
from wafl.chain.anvil import Anvil, increase_time
from wafl.chain.artifact import Deployment
from wafl.chain.deploy import deploy
from wafl.chain.status import read_status
from wafl.chain.tx import send
from wafl.core.config import ModelConfig
from wafl.zk.prover import Prover

ROUND_SECONDS = 600


def wafl_status(*argv: str, timeout: float = 120) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Run `wafl status argv`: its result and the processes it left running."""
    marker = uuid.uuid4().hex
    proc = subprocess.run([sys.executable, "-m", "tools.cli", "status", *argv], capture_output=True, text=True,
                          timeout=timeout, env=command_env(marker), stdin=subprocess.DEVNULL)
    return proc, processes_with(marker)


def status_json(anvil: Anvil, artifact: Path) -> dict[str, Any]:
    proc, left = wafl_status("--deployment", str(artifact), "--rpc-url", anvil.url, "--json")
    assert proc.returncode == 0 and not left, proc.stderr
    answer: dict[str, Any] = json.loads(proc.stdout)
    return answer


def packed_hash(words: list[int]) -> str:
    return Web3.keccak(b"".join(w.to_bytes(32, "big") for w in words)).to_0x_hex()


def chain_state(w3: Web3, deployment: Deployment, members: Sequence[str], block: int,
                history: int = 5) -> dict[str, Any]:
    """What the chain holds at `block`, read view by view; `members` the participants registered."""
    contract = w3.eth.contract(address=Web3.to_checksum_address(deployment.address), abi=deployment.abi)
    f = contract.functions

    def at(call: Any) -> Any:
        return call.call(block_identifier=block)

    role = at(f.PARTICIPANT_ROLE())
    assert all(at(f.hasRole(role, m)) for m in members)
    header = w3.eth.get_block(block)
    round_id, deadline, accepted = at(f.currentRound())
    words = at(f.globalModel())
    finalized = contract.events.RoundFinalized().get_logs(from_block=deployment.start_block, to_block=block)
    cfg = deployment.model_config
    return {
        "chain_id": w3.eth.chain_id, "block_number": block, "block_hash": header["hash"].to_0x_hex(),
        "block_timestamp": header["timestamp"], "address": contract.address, "verifier": at(f.verifier()),
        "start_block": deployment.start_block, "config_name": cfg.name, "d_in": cfg.d_in, "d_out": cfg.d_out,
        "keys_kind": "development", "vk_hash": "0x" + at(f.verificationKeyHash()).hex(),
        "n_weights": at(f.nWeights()), "n_words": at(f.nWords()), "weight_bits": at(f.weightBits()),
        "slot_bits": at(f.slotBits()), "lanes_per_word": at(f.lanesPerWord()),
        "max_participants": at(f.maxParticipants()), "quorum": at(f.quorum()), "round_duration": at(f.roundDuration()),
        "round": round_id, "deadline": deadline, "accepted": accepted,
        "participant_count": at(f.participantCount()), "attested_count": at(f.attestedCount()),
        "participants": [{"address": m, "attested": at(f.hasAttested(m)), "submitted": at(f.hasSubmitted(m))}
                         for m in members],
        "finalized": [{"round": log["args"]["round"], "accepted": log["args"]["accepted"],
                       "block_number": log["blockNumber"], "block_hash": log["blockHash"].to_0x_hex(),
                       "tx_hash": log["transactionHash"].to_0x_hex()} for log in finalized][-history:],
        "model_hash": packed_hash(words),
        "artifact_mismatches": [],
        "seconds_left": deadline - header["timestamp"] if round_id else None,
    }


def submit(cfg: ModelConfig, worker: Prover, aggregator: AggregatorClient, account: LocalAccount, seed: int) -> Any:
    round_id = aggregator.current_round().round
    update = make_update(cfg, worker, aggregator.global_model(), account.address, round_id, random.Random(seed))
    return aggregator.submit_update(account, round_id, update.words, update.proof)


def test_status_equals_the_chain_before_during_and_after_rounds(
    anvil: Anvil, w3: Web3, ref_config: ModelConfig, ref_worker: Prover, tmp_path: Path,
) -> None:
    admin, a, b, c = (new_account(w3) for _ in range(4))
    # c is registered by address only: it attests itself, which opens round 1.
    deployment = deploy(w3, admin, ref_config, quorum=2, round_duration=ROUND_SECONDS, participants=[a, b, c.address])
    artifact = tmp_path / "deployment.json"
    deployment.save(artifact)
    aggregator = AggregatorClient(w3, deployment)
    members = [a.address, b.address, c.address]

    before = read_status(w3, deployment)
    assert before.as_dict() == chain_state(w3, deployment, members, before.block_number)
    assert (before.round, before.attested_count, before.participant_count, before.seconds_left) == (0, 2, 3, None)
    assert [p.attested for p in before.participants] == [True, True, False]
    assert "not open: 2 of 3 participants attested" in render(before)

    aggregator.attest_keys(c)
    opened = w3.eth.get_block("latest")
    submit(ref_config, ref_worker, aggregator, a, seed=1)
    with ThreadPoolExecutor(max_workers=2) as pool:  # the JSON and the text, of the same block
        as_text = pool.submit(wafl_status, "--deployment", str(artifact), "--rpc-url", anvil.url)
        during = status_json(anvil, artifact)
        text, left = as_text.result()
    assert during == chain_state(w3, deployment, members, during["block_number"])
    assert (during["round"], during["accepted"], during["quorum"]) == (1, 1, 2)
    assert during["deadline"] == opened["timestamp"] + ROUND_SECONDS
    assert [(p["attested"], p["submitted"]) for p in during["participants"]] == [(True, True), (True, False),
                                                                                 (True, False)]
    assert 0 < during["seconds_left"] <= ROUND_SECONDS and during["finalized"] == []
    assert text.returncode == 0 and not left, text.stderr
    for fact in (deployment.address, "round        1, 1 accepted of quorum 2", "left)", during["model_hash"],
                 f"{a.address}  attested      submitted", f"{b.address}  attested      not submitted",
                 "finalised rounds: none yet", "ref-9x6-b10"):
        assert fact in text.stdout, (fact, text.stdout)

    receipt = submit(ref_config, ref_worker, aggregator, b, seed=2)  # the quorum: round 1 closes
    after = status_json(anvil, artifact)
    assert after == chain_state(w3, deployment, members, after["block_number"])
    assert after["finalized"] == [{"round": 1, "accepted": 2, "block_number": receipt["blockNumber"],
                                   "block_hash": receipt["blockHash"].to_0x_hex(),
                                   "tx_hash": receipt["transactionHash"].to_0x_hex()}]
    assert (after["round"], after["accepted"]) == (2, 0)
    assert not any(p["submitted"] for p in after["participants"])
    assert after["model_hash"] != during["model_hash"]
    round_2 = aggregator.contract.events.RoundOpened().get_logs(from_block=receipt["blockNumber"],
                                                                 argument_filters={"round": 2})
    assert after["model_hash"] == packed_hash(round_2[0]["args"]["globalWords"])

    increase_time(w3, ROUND_SECONDS + 60)
    late = read_status(w3, deployment)
    assert late.as_dict() == chain_state(w3, deployment, members, late.block_number)
    assert late.seconds_left is not None and late.seconds_left <= -60
    assert "ago: anyone may finalise it" in render(late)

    # Closed by its deadline with nothing accepted; then c's role revoked.
    aggregator.finalize_round(c)
    role = aggregator.contract.functions.PARTICIPANT_ROLE().call()
    send(w3, admin, aggregator.contract.functions.revokeRole(role, c.address), aggregator.decoder)
    last = read_status(w3, deployment, history=1)
    assert last.as_dict() == chain_state(w3, deployment, members[:2], last.block_number, history=1)
    assert [(r.round, r.accepted) for r in last.finalized] == [(2, 0)]
    assert (last.round, last.participant_count, last.attested_count) == (3, 2, 2)
    assert [(r.round, r.accepted) for r in read_status(w3, deployment).finalized] == [(1, 2), (2, 0)]
    # An artifact whose terms are not the contract's: the contract's are shown, the difference named.
    other = read_status(w3, replace(deployment, quorum=3, round_duration=60))
    assert (other.quorum, other.round_duration, other.artifact_mismatches) == (2, ROUND_SECONDS,
                                                                               ("quorum", "round_duration"))
    assert "differs from the contract in quorum, round_duration" in render(other)


def test_watch_refreshes_in_place_until_interrupted(ref_config: ModelConfig, tmp_path: Path) -> None:
    node = Anvil()  # its own: stopped half-way, the refreshes fail and the watch goes on
    with node:
        w3 = node.web3()
        admin, a, b = (new_account(w3) for _ in range(3))
        deployment = deploy(w3, admin, ref_config, quorum=2, round_duration=ROUND_SECONDS, participants=[a, b.address])
        artifact = tmp_path / "deployment.json"
        deployment.save(artifact)
        marker = uuid.uuid4().hex
        outputs = {(kind, stream): tmp_path / f"{kind}.{stream}" for kind in ("text", "json")
                   for stream in ("out", "err")}
        watchers = {}
        for kind in ("text", "json"):
            with outputs[kind, "out"].open("wb") as out, outputs[kind, "err"].open("wb") as err:
                watchers[kind] = subprocess.Popen(
                    [sys.executable, "-m", "tools.cli", "status", "--deployment", str(artifact), "--rpc-url", node.url,
                     "--watch", "0.3", *(["--json"] if kind == "json" else [])],
                    stdout=out, stderr=err, env=command_env(marker), stdin=subprocess.DEVNULL)

        def wait_for(kind: str, stream: str, done: Any) -> str:
            deadline = time.monotonic() + 60
            while not done(text := outputs[kind, stream].read_text()):
                assert watchers[kind].poll() is None and time.monotonic() < deadline, text[-2000:]
                time.sleep(0.1)
            return text

        try:
            wait_for("text", "out", lambda t: "round        not open" in t)
            # Both watchers show the round not open before it opens (under load the JSON one's
            # first frame could otherwise come after the attestation).
            wait_for("json", "out", lambda t: '"round": 0' in t)
            AggregatorClient(w3, deployment).attest_keys(b)  # round 1 opens: a later refresh shows it
            wait_for("text", "out", lambda t: "round        1, 0 accepted of quorum 2" in t)
            frames = wait_for("json", "out", lambda t: '"round": 1' in t).splitlines()
            node.stop()
            text = wait_for("text", "out", lambda t: "last refresh failed at" in t)
            wait_for("json", "err", lambda t: "refresh failed" in t)
        finally:
            for watcher in watchers.values():
                watcher.send_signal(signal.SIGINT)
            codes = {kind: watcher.wait(timeout=30) for kind, watcher in watchers.items()}
    screens = text.split(CLEAR)
    assert len(screens) >= 4 and screens[0] == ""  # each refresh overwrites the screen
    assert "round        not open" in screens[1] and "last refresh failed" not in screens[1]
    # The last snapshot stays on the screen, with why it is not newer.
    assert "round        1, 0 accepted" in screens[-1] and "no answer from the node (ConnectionError)" in screens[-1]
    assert [json.loads(frame)["round"] for frame in frames][-1] == 1 and json.loads(frames[0])["round"] == 0
    assert codes == {"text": 130, "json": 130}
    assert outputs["text", "err"].read_text().strip() == "wafl: interrupted"
    *failures, last = outputs["json", "err"].read_text().strip().splitlines()
    assert last == "wafl: interrupted" and failures
    assert all(line.startswith("wafl status: refresh failed at") for line in failures), failures
    assert processes_with(marker) == []


def test_bad_input_is_one_line_exit_2(anvil: Anvil, w3: Web3, ref_config: ModelConfig, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    deployment = deploy(w3, new_account(w3), ref_config, quorum=1, round_duration=ROUND_SECONDS)
    files = {
        "not-json.json": "{",
        "not-artifact.json": json.dumps({"version": 2, "colour": "blue"}),
        "old-version.json": json.dumps({"version": 1}),
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    for name, changed in {"bad-address": replace(deployment, address="0x12"),
                          "no-contract": replace(deployment, address=new_account(w3).address),
                          "other-chain": replace(deployment, chain_id=1),
                          "not-aggregator": replace(deployment, address=deployment.verifier_address)}.items():
        changed.save(tmp_path / f"{name}.json")
    deployment.save(tmp_path / "good.json")
    cases = {
        "absent": (["--deployment", "absent.json"], "absent.json does not exist"),
        "not-json": (["--deployment", "not-json.json"], "is not JSON"),
        "not-artifact": (["--deployment", "not-artifact.json"], "is not a deployment artifact"),
        "old-version": (["--deployment", "old-version.json"], "unknown version"),
        "bad-address": (["--deployment", "bad-address.json"], "names no contract address"),
        "no-contract": (["--deployment", "no-contract.json"], "no contract at 0x"),
        "other-chain": (["--deployment", "other-chain.json"], "the node serves chain 31337, the deployment artifact "
                                                              "is for chain 1"),
        "not-aggregator": (["--deployment", "not-aggregator.json"], "does not answer as a WaflAggregator"),
        "no-node": (["--deployment", "good.json", "--rpc-url", "http://127.0.0.1:1"], "no Ethereum node answers"),
        "watch-zero": (["--deployment", "good.json", "--watch", "0"], "refresh at most every 0.2 s"),
        "history-word": (["--deployment", "good.json", "--history", "all"], "not a whole number of rounds"),
    }

    def run(argv: list[str]) -> tuple[int, str, str]:
        flags = [str(tmp_path / a) if a.endswith(".json") else a for a in argv]
        argv = ["status", *flags, *([] if "--rpc-url" in argv else ["--rpc-url", anvil.url])]
        try:
            code = main(argv)
        except SystemExit as exc:  # the parser's refusal
            code = int(exc.code or 0)
        out = capsys.readouterr()
        return code, out.out, out.err

    # In this process, but for two cases run as the command itself (its start-up is seconds of imports).
    with ThreadPoolExecutor(max_workers=2) as pool:
        commands = {name: pool.submit(wafl_status, *(str(tmp_path / a) if a.endswith(".json") else a
                                                    for a in cases[name][0]), "--rpc-url", anvil.url)
                    for name in ("absent", "no-contract")}
        results = {name: run(argv) for name, (argv, _) in cases.items() if name not in commands}
        for name, future in commands.items():
            proc, left = future.result()
            assert not left, name
            results[name] = (proc.returncode, proc.stdout, proc.stderr)
    for name, (code, out, err) in results.items():
        line = one_line_exit_2(code, out, err)
        assert cases[name][1] in line, (name, line)
        assert not out, name
