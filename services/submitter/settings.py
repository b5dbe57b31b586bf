"""Submitter settings (WAFL_* environment variables or a YAML file).

The organisation's private key comes from a file (``WAFL_KEY_FILE``, the normal case: a mounted
secret), from an encrypted keystore (``WAFL_KEYSTORE``, opened with the password in
``WAFL_KEYSTORE_PASSWORD_FILE``) or from ``WAFL_SUBMITTER_KEY``; any way it is registered for
redaction as soon as it is read and never printed. Reading and checking it is
``services.submitter.keys.load_account``.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator

from services.submitter.records import MIN_REPLACEMENT_BUMP_PERCENT, TxPolicy
from wafl.bus.secrets import register_secret
from wafl.bus.settings import ServiceSettings

_POLICY = TxPolicy()


class SubmitterSettings(ServiceSettings):
    """The transaction defaults are TxPolicy's (one place); ``policy()`` is what the engine gets."""

    key_file: Path | None = Field(default=None, description="file holding the organisation's private key (hex)")
    submitter_key: SecretStr | None = Field(
        default=None, description="the private key itself (WAFL_SUBMITTER_KEY), when no key file is used"
    )
    keystore: Path | None = Field(
        default=None, description="the organisation's key as an encrypted JSON keystore (`wafl org init`), "
                                  "instead of a key file"
    )
    keystore_password_file: Path | None = Field(
        default=None, description="file holding the keystore's password (a mounted Secret)"
    )
    receipt_timeout: float = Field(
        default=_POLICY.receipt_timeout, gt=0,
        description="seconds a transaction may take to be mined, re-sends included",
    )
    resend_after: float = Field(
        default=_POLICY.resend_after, gt=0,
        description="seconds without a receipt before re-sending with the same nonce and a higher fee",
    )
    replace_after_blocks: int = Field(
        default=_POLICY.replace_after_blocks, ge=1, le=1000,
        description="new blocks without a receipt before re-sending with the same nonce and a higher fee "
                    "(a block whose base fee exceeds the pending max fee re-sends at once)",
    )
    fee_bump_percent: int = Field(
        default=_POLICY.fee_bump_percent, ge=MIN_REPLACEMENT_BUMP_PERCENT, le=200,
        description=f"fee increase of a replacement (nodes require at least {MIN_REPLACEMENT_BUMP_PERCENT}%)",
    )
    max_fee_gwei: float = Field(
        default=_POLICY.max_fee_wei / 10**9, gt=0,
        description="the fee ceiling: never offer more than this per gas; a transaction the chain prices above it "
                    "is reported (fee_ceiling) and left pending",
    )
    gas_multiplier: float = Field(
        default=_POLICY.gas_multiplier, ge=1.0, le=5.0, description="gas limit = estimate x this + allowance"
    )
    confirmations: int = Field(
        default=_POLICY.confirmations, ge=0, le=64,
        description="blocks on top of a mined transaction before it counts; a reorg within them re-sends it",
    )
    lock_wait: float = Field(
        default=_POLICY.lock_wait, gt=0,
        description="seconds to wait for the key's nonce lock held by another replica",
    )

    def policy(self) -> TxPolicy:
        return TxPolicy(
            receipt_timeout=self.receipt_timeout,
            resend_after=self.resend_after,
            replace_after_blocks=self.replace_after_blocks,
            fee_bump_percent=self.fee_bump_percent,
            max_fee_wei=int(self.max_fee_gwei * 10**9),
            gas_multiplier=self.gas_multiplier,
            lock_wait=self.lock_wait,
            confirmations=self.confirmations,
        )

    @field_validator("submitter_key")
    @classmethod
    def _register_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            register_secret(value.get_secret_value().strip())
        return value
