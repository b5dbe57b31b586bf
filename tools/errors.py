"""The command line's own bad-input error, importable by every command module without the CLI."""

from __future__ import annotations


class UsageError(ValueError):
    """Bad input found by the command line itself (a flag, a file, a server it needs to reach)."""
