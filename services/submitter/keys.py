"""The organisation's signing key: read once at start-up, registered for redaction, never shown.

Three sources, exactly one of them set: a file holding the key in hex (``WAFL_KEY_FILE``), the key
itself (``WAFL_SUBMITTER_KEY``), or an encrypted Ethereum keystore (``WAFL_KEYSTORE``, the
standard version 3 JSON of eth-account that `wafl org init` writes) with its password in a file
(``WAFL_KEYSTORE_PASSWORD_FILE``: a mounted Secret). Every error message names where the key was
expected (file path or variable name) and what is wrong with it, never the key material or the
password.
"""

from __future__ import annotations

import json
import re
import stat
from pathlib import Path

from eth_account import Account
from eth_account.signers.local import LocalAccount

from services.submitter.settings import SubmitterSettings
from wafl.bus.secrets import register_secret
from wafl.bus.service import StartupError

_HEX_KEY = re.compile(r"[0-9a-fA-F]{64}")


def load_account(settings: SubmitterSettings) -> tuple[LocalAccount, list[str]]:
    """The signing account and warnings to log (e.g. a key file others can read).

    StartupError when no key or more than one is configured, a file is missing or unreadable, its
    content is not a secp256k1 private key, or the keystore's password does not open it.
    """
    sources = {"WAFL_KEY_FILE": settings.key_file, "WAFL_SUBMITTER_KEY": settings.submitter_key,
               "WAFL_KEYSTORE": settings.keystore}
    chosen = [name for name, value in sources.items() if value is not None]
    if len(chosen) > 1:
        raise StartupError(f"{' and '.join(chosen)} are set: keep only one source of the signing key")
    warnings: list[str] = []
    if settings.keystore is not None:
        return _keystore_account(settings, warnings), warnings
    if settings.keystore_password_file is not None:
        raise StartupError("WAFL_KEYSTORE_PASSWORD_FILE is set but not WAFL_KEYSTORE: name the keystore it opens")
    if settings.key_file is not None:
        path = settings.key_file
        source = f"key file {path} (WAFL_KEY_FILE)"
        raw = read_secret_file(path, source, "key file", warnings)
        try:
            text = raw.decode()
        except UnicodeDecodeError:
            raise StartupError(f"{source} is not a text file holding a hexadecimal private key") from None
    elif settings.submitter_key is not None:
        source = "WAFL_SUBMITTER_KEY"
        text = settings.submitter_key.get_secret_value()
    else:
        raise StartupError(
            "no signing key: set WAFL_KEY_FILE to a file holding the organisation's private key "
            "(or WAFL_KEYSTORE and WAFL_KEYSTORE_PASSWORD_FILE, or WAFL_SUBMITTER_KEY)"
        )
    value = text.strip()
    # Registered before anything else happens with it, valid or not: even a mistyped key is secret.
    register_secret(value)
    digits = value[2:] if value[:2].lower() == "0x" else value
    register_secret(digits)
    if not _HEX_KEY.fullmatch(digits):
        raise StartupError(
            f"{source} does not hold a private key: expected 64 hexadecimal digits (optionally 0x-prefixed)"
        )
    try:
        account: LocalAccount = Account.from_key("0x" + digits)
    except Exception:  # zero or above the curve order; the library's message is not shown
        raise StartupError(f"{source} does not hold a valid secp256k1 private key") from None
    return account, warnings


def _keystore_account(settings: SubmitterSettings, warnings: list[str]) -> LocalAccount:
    assert settings.keystore is not None
    if settings.keystore_password_file is None:
        raise StartupError(
            "WAFL_KEYSTORE is set but not WAFL_KEYSTORE_PASSWORD_FILE: name the file holding the keystore's password"
        )
    source = f"keystore {settings.keystore} (WAFL_KEYSTORE)"
    password_source = f"password file {settings.keystore_password_file} (WAFL_KEYSTORE_PASSWORD_FILE)"
    keystore = read_secret_file(settings.keystore, source, "keystore", warnings)
    password = read_password(settings.keystore_password_file, password_source, warnings)
    return decrypt_keystore(keystore, password, source, password_source)


def read_secret_file(path: Path, source: str, kind: str, warnings: list[str] | None = None) -> bytes:
    """The bytes of a key, keystore or password file (`kind`); a warning when others may read it.

    StartupError, naming `source`, when the file is missing, a directory or unreadable.
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise StartupError(f"{source} does not exist") from None
    except IsADirectoryError:
        raise StartupError(f"{source} is a directory, not a {kind}") from None
    except OSError as exc:
        raise StartupError(f"cannot read {source}: {exc.strerror or type(exc).__name__}") from None
    if warnings is not None:
        try:
            mode = path.stat().st_mode
            if mode & (stat.S_IRWXG | stat.S_IRWXO):
                warnings.append(f"{source} is accessible to other users (mode {stat.filemode(mode)}): chmod 600 it")
        except OSError:
            pass
    return raw


def read_password(path: Path, source: str, warnings: list[str] | None = None) -> str:
    """A keystore's password: the file's text without its line ending; registered as a secret."""
    raw = read_secret_file(path, source, "password file", warnings)
    try:
        password = raw.decode().rstrip("\r\n")
    except UnicodeDecodeError:
        raise StartupError(f"{source} is not UTF-8 text") from None
    register_secret(password)
    if not password:
        raise StartupError(f"{source} is empty: it should hold the keystore's password")
    return password


def decrypt_keystore(keystore: bytes, password: str, source: str, password_source: str) -> LocalAccount:
    """The account an encrypted JSON keystore (version 3) holds; its key is registered as a secret.

    StartupError, naming `source` and `password_source`, when the file is not such a keystore or
    the password does not open it (a keystore cannot tell a wrong password from a damaged file).
    """
    try:
        document = json.loads(keystore)
    except (UnicodeDecodeError, json.JSONDecodeError):
        document = None
    if not isinstance(document, dict) or document.get("version") != 3 or \
            not isinstance(document.get("crypto", document.get("Crypto")), dict):
        raise StartupError(f"{source} is not an Ethereum keystore (version 3 JSON, as `wafl org init` writes)")
    try:
        key = Account.decrypt(document, password)
    except ValueError as exc:
        if "MAC mismatch" in str(exc):
            raise StartupError(f"{source} does not open with the password in {password_source}: "
                               "wrong password, or a damaged keystore") from None
        raise StartupError(f"{source} is not a keystore eth-account can read ({type(exc).__name__})") from None
    except Exception as exc:  # an unsupported cipher or KDF, a malformed field: the library's message is not shown
        raise StartupError(f"{source} is not a keystore eth-account can read ({type(exc).__name__})") from None
    register_secret(key.hex())
    account: LocalAccount = Account.from_key(key)
    stated = document.get("address")
    if isinstance(stated, str) and stated.lower().removeprefix("0x") != account.address.lower()[2:]:
        raise StartupError(f"{source} names address 0x{stated.removeprefix('0x')} but holds the key of "
                           f"{account.address}: a damaged or edited keystore")
    return account
