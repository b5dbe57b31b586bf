"""Secret values known to this process, scrubbed from anything it logs or publishes."""

from __future__ import annotations

import re
import threading
from urllib.parse import urlsplit

_lock = threading.Lock()
_secrets: set[str] = set()
MASK = "***"


def register_secret(value: str | None) -> None:
    """Remember a secret (a private key, a password) so that ``redact`` hides it."""
    if not value or len(value) < 4:
        return
    with _lock:
        _secrets.add(value)
        if value.startswith("0x"):
            _secrets.add(value[2:])


def register_url(url: str) -> None:
    """Register the password of a URL such as amqp://user:password@host/."""
    password = urlsplit(url).password
    if password:
        register_secret(password)


def redact(text: str) -> str:
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        text = re.sub(re.escape(secret), MASK, text, flags=re.IGNORECASE)
    return text


def safe_url(url: str) -> str:
    """The URL with its password masked, for messages about it."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    return url.replace(f":{parts.password}@", f":{MASK}@", 1)
