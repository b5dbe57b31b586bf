"""The submitter's signing key from an encrypted keystore (WAFL_KEYSTORE, WAFL_KEYSTORE_PASSWORD_FILE):
opened with the right password, refused in one message that names the files and shows no secret
otherwise, and exactly one source of the key. The keystores here use a cheap KDF (the format is the
same); tests/integration/test_org_init.py runs the service on one `wafl org init` made."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount

from services.submitter.keys import load_account
from services.submitter.settings import SubmitterSettings
from tools.errors import UsageError
from tools.org import keystore_signer
from wafl.bus.secrets import redact
from wafl.bus.service import StartupError

PASSWORD = "keystore-Sekret-4711"


@pytest.fixture(scope="module")
def account() -> LocalAccount:
    made: LocalAccount = Account.create()
    return made


def write_keystore(directory: Path, account: LocalAccount, password: str = PASSWORD, **changes: Any) -> Path:
    document = {**Account.encrypt(account.key, password, kdf="pbkdf2", iterations=2), **changes}
    path = directory / "keystore.json"
    path.write_text(json.dumps(document))
    path.chmod(0o600)
    return path


def write_password(directory: Path, text: str, name: str = "password") -> Path:
    path = directory / name
    path.write_text(text)
    path.chmod(0o600)
    return path


def settings(**values: Any) -> SubmitterSettings:
    return SubmitterSettings(org="acme", **values)


def refused(values: dict[str, Any]) -> str:
    with pytest.raises(StartupError) as caught:
        load_account(settings(**values))
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_opens_the_keystore_with_the_password_file(account: LocalAccount, tmp_path: Path) -> None:
    keystore = write_keystore(tmp_path, account)
    # A password file as `echo ... > file` or a Secret writes it: the line ending is not part of it.
    for text in (PASSWORD, PASSWORD + "\n", PASSWORD + "\r\n"):
        loaded, warnings = load_account(settings(keystore=keystore,
                                                 keystore_password_file=write_password(tmp_path, text)))
        assert loaded.address == account.address and warnings == []
    # Both the password and the key it opened are scrubbed from whatever is logged.
    assert PASSWORD not in redact(f"x {PASSWORD} y") and account.key.hex()[2:] not in redact(account.key.hex())


def test_a_wrong_password_is_refused_without_showing_it(account: LocalAccount, tmp_path: Path) -> None:
    keystore = write_keystore(tmp_path, account)
    wrong = write_password(tmp_path, "not-the-password\n")
    message = refused({"keystore": keystore, "keystore_password_file": wrong})
    assert message == (f"keystore {keystore} (WAFL_KEYSTORE) does not open with the password in password file "
                       f"{wrong} (WAFL_KEYSTORE_PASSWORD_FILE): wrong password, or a damaged keystore")
    assert "not-the-password" not in message


@pytest.mark.parametrize(("case", "expected"), [
    ("no-password-file", "WAFL_KEYSTORE is set but not WAFL_KEYSTORE_PASSWORD_FILE"),
    ("only-password-file", "WAFL_KEYSTORE_PASSWORD_FILE is set but not WAFL_KEYSTORE"),
    ("key-file-too", "WAFL_KEY_FILE and WAFL_KEYSTORE are set: keep only one source of the signing key"),
    ("key-too", "WAFL_SUBMITTER_KEY and WAFL_KEYSTORE are set: keep only one"),
    ("missing", "keystore {tmp}/absent.json (WAFL_KEYSTORE) does not exist"),
    ("directory", "keystore {tmp} (WAFL_KEYSTORE) is a directory, not a keystore"),
    ("not-json", "keystore {tmp}/plain.key (WAFL_KEYSTORE) is not an Ethereum keystore (version 3 JSON"),
    ("version-1", "keystore {tmp}/keystore.json (WAFL_KEYSTORE) is not an Ethereum keystore"),
    ("unknown-kdf", "keystore {tmp}/keystore.json (WAFL_KEYSTORE) is not a keystore eth-account can read"),
    ("other-address", "keystore {tmp}/keystore.json (WAFL_KEYSTORE) names address 0x"),
    ("empty-password", "password file {tmp}/password (WAFL_KEYSTORE_PASSWORD_FILE) is empty"),
    ("missing-password", "password file {tmp}/absent (WAFL_KEYSTORE_PASSWORD_FILE) does not exist"),
])
def test_refuses_a_keystore_it_cannot_use(account: LocalAccount, tmp_path: Path, case: str, expected: str) -> None:
    keystore = write_keystore(tmp_path, account)
    password = write_password(tmp_path, PASSWORD)
    values: dict[str, Any] = {"keystore": keystore, "keystore_password_file": password}
    match case:
        case "no-password-file":
            values = {"keystore": keystore}
        case "only-password-file":
            values = {"keystore_password_file": password}
        case "key-file-too":
            values["key_file"] = tmp_path / "org.key"
        case "key-too":
            values["submitter_key"] = account.key.hex()
        case "missing":
            values["keystore"] = tmp_path / "absent.json"
        case "directory":
            values["keystore"] = tmp_path
        case "not-json":
            values["keystore"] = write_password(tmp_path, account.key.hex(), "plain.key")
        case "version-1":
            write_keystore(tmp_path, account, version=1)
        case "unknown-kdf":
            document = json.loads(keystore.read_text())
            document["crypto"]["kdf"] = "argon2"
            keystore.write_text(json.dumps(document))
        case "other-address":
            write_keystore(tmp_path, account, address=Account.create().address[2:])
        case "empty-password":
            write_password(tmp_path, "\n")
        case "missing-password":
            values["keystore_password_file"] = tmp_path / "absent"
    message = refused(values)
    assert expected.format(tmp=tmp_path) in message, message
    assert PASSWORD not in message and account.key.hex()[2:] not in message.lower()


def test_a_keystore_others_can_read_is_used_with_a_warning(account: LocalAccount, tmp_path: Path) -> None:
    keystore = write_keystore(tmp_path, account)
    keystore.chmod(0o644)
    loaded, warnings = load_account(settings(keystore=keystore,
                                             keystore_password_file=write_password(tmp_path, PASSWORD)))
    assert loaded.address == account.address
    assert warnings == [f"keystore {keystore} (WAFL_KEYSTORE) is accessible to other users (mode -rw-r--r--): "
                        "chmod 600 it"]


def test_the_command_lines_signer_opens_the_same_keystore(account: LocalAccount, tmp_path: Path) -> None:
    keystore = write_keystore(tmp_path, account)
    password = write_password(tmp_path, PASSWORD + "\n")
    assert keystore_signer(str(keystore), str(password)).address == account.address
    with pytest.raises(UsageError, match="needs its password: pass --password-file"):
        keystore_signer(str(keystore), None)
    wrong = write_password(tmp_path, "not-the-password", "wrong")
    with pytest.raises(UsageError, match=f"keystore {keystore} does not open with the password in password file"):
        keystore_signer(str(keystore), str(wrong))
