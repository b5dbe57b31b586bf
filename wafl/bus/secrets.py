"""Secret values known to this process, scrubbed from anything it logs or publishes."""

from __future__ import annotations

import re
import threading
from urllib.parse import urlsplit, urlunsplit

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
    """Register the secret parts of a URL: the password of amqp://user:password@host/, and the
    path and query of an http(s) RPC URL (providers put API keys there: https://host/v3/KEY)."""
    parts = urlsplit(url)
    if parts.password:
        register_secret(parts.password)
    if parts.scheme in ("http", "https"):
        for secret in (parts.path.strip("/"), parts.query):
            if len(secret) >= 8:  # a short path ("rpc") is no key, and masking it everywhere would maim logs
                register_secret(secret)


def redact(text: str) -> str:
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        text = re.sub(re.escape(secret), MASK, text, flags=re.IGNORECASE)
    return text


def safe_url(url: str) -> str:
    """The URL for messages about it: the password masked, and an http(s) URL's path and query too
    (where providers put API keys)."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password:
        netloc = netloc.replace(f":{parts.password}@", f":{MASK}@", 1)
    path, query = parts.path, parts.query
    if parts.scheme in ("http", "https"):
        path = f"/{MASK}" if path.strip("/") else path
        query = MASK if query else ""
    return urlunsplit((parts.scheme, netloc, path, query, parts.fragment))
