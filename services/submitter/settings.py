"""Submitter settings (WAFL_* environment variables or a YAML file).

The organisation's private key comes from a file (``WAFL_KEY_FILE``, the normal case: a mounted
secret) or from ``WAFL_SUBMITTER_KEY``; either way it is registered for redaction as soon as it is
read and never printed. Reading and checking it is ``services.submitter.keys.load_account``.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator

from wafl.bus.secrets import register_secret
from wafl.bus.settings import ServiceSettings


class SubmitterSettings(ServiceSettings):
    key_file: Path | None = Field(default=None, description="file holding the organisation's private key (hex)")
    submitter_key: SecretStr | None = Field(
        default=None, description="the private key itself (WAFL_SUBMITTER_KEY), when no key file is used"
    )
    receipt_timeout: float = Field(
        default=120.0, gt=0, description="seconds a transaction may take to be mined, re-sends included"
    )
    resend_after: float = Field(
        default=15.0, gt=0,
        description="seconds without a receipt before re-sending with the same nonce and a higher fee",
    )
    fee_bump_percent: int = Field(
        default=15, ge=10, le=200, description="fee increase of a replacement (nodes require at least 10%)"
    )
    max_fee_gwei: float = Field(default=500.0, gt=0, description="never offer more than this per gas")
    gas_multiplier: float = Field(default=1.2, ge=1.0, le=5.0, description="gas limit = estimate x this + allowance")
    confirmations: int = Field(
        default=2, ge=0, le=64,
        description="blocks on top of a mined transaction before it counts; a reorg within them re-sends it",
    )
    lock_wait: float = Field(
        default=600.0, gt=0, description="seconds to wait for the key's nonce lock held by another replica"
    )

    @field_validator("submitter_key")
    @classmethod
    def _register_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            register_secret(value.get_secret_value().strip())
        return value
