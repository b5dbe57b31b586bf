"""What messages and logs may show of a URL: never a password, nor an RPC provider's API key."""

from __future__ import annotations

import pytest

from wafl.bus.secrets import MASK, redact, register_url, safe_url


@pytest.mark.parametrize(("url", "shown"), [
    ("amqp://guest:s3cret-pass@rabbit:5672/wafl", f"amqp://guest:{MASK}@rabbit:5672/wafl"),
    ("redis://127.0.0.1:6379/2", "redis://127.0.0.1:6379/2"),
    ("http://127.0.0.1:8545", "http://127.0.0.1:8545"),
    ("https://mainnet.example.io/v3/0123456789abcdef", f"https://mainnet.example.io/{MASK}"),
    ("https://rpc.example.io/?apikey=0123456789abcdef", f"https://rpc.example.io/?{MASK}"),
    ("http://user:pw-123456@node:8545/key-0123456789", f"http://user:{MASK}@node:8545/{MASK}"),
])
def test_safe_url_masks_passwords_and_rpc_keys(url: str, shown: str) -> None:
    assert safe_url(url) == shown


def test_an_rpc_api_key_is_scrubbed_from_any_text_once_registered() -> None:
    key = "f00dfacecafe4242beef"
    register_url(f"https://eth.example.io/v3/{key}")
    text = f"HTTPSConnectionPool(host='eth.example.io'): Max retries exceeded with url: /v3/{key}"
    assert key not in redact(text) and MASK in redact(text)
