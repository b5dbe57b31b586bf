"""The organisation's signing key: read once at start-up, registered for redaction, never shown.

Every error message names where the key was expected (file path or variable name) and what is
wrong with it, never the key material itself.
"""

from __future__ import annotations

import re
import stat

from eth_account import Account
from eth_account.signers.local import LocalAccount

from services.submitter.settings import SubmitterSettings
from wafl.bus.secrets import register_secret
from wafl.bus.service import StartupError

_HEX_KEY = re.compile(r"[0-9a-fA-F]{64}")


def load_account(settings: SubmitterSettings) -> tuple[LocalAccount, list[str]]:
    """The signing account and warnings to log (e.g. a key file others can read).

    StartupError when no key is configured, the file is missing or unreadable, or its content is
    not a secp256k1 private key.
    """
    warnings: list[str] = []
    if settings.key_file is not None and settings.submitter_key is not None:
        raise StartupError("both WAFL_KEY_FILE and WAFL_SUBMITTER_KEY are set: keep only one")
    if settings.key_file is not None:
        path = settings.key_file
        source = f"key file {path} (WAFL_KEY_FILE)"
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise StartupError(f"{source} does not exist") from None
        except IsADirectoryError:
            raise StartupError(f"{source} is a directory, not a key file") from None
        except OSError as exc:
            raise StartupError(f"cannot read {source}: {exc.strerror or type(exc).__name__}") from None
        try:
            mode = path.stat().st_mode
            if mode & (stat.S_IRWXG | stat.S_IRWXO):
                warnings.append(f"{source} is accessible to other users (mode {stat.filemode(mode)}): chmod 600 it")
        except OSError:
            pass
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
            "(or WAFL_SUBMITTER_KEY)"
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
