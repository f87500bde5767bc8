"""User-facing errors. A leaf module: it imports nothing from the project (pip's rule for exceptions).

Every error the CLI can show derives from `VaultpolicyError`; `vaultpolicy.cli.main` is the one
place that turns them into a message on stderr and an exit code. Anything else reaching it is a bug
and is reported as an internal error, still without a traceback unless VAULTPOLICY_DEBUG=1.
"""

from __future__ import annotations


class VaultpolicyError(Exception):
    """Base: `message` is one line; `hint` is an optional second line telling what to do."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    @property
    def shown(self) -> str:
        """The line the user reads after `error: `: the message, and what a subclass adds to it."""
        return self.message


class InputError(VaultpolicyError):
    """A file the user named cannot be read or is not what the command needs."""


class PlanRejected(VaultpolicyError):
    """A signed plan (or trust root) failed verification; `reason` is a stable kebab-case word."""

    def __init__(self, reason: str, message: str, hint: str | None = None):
        super().__init__(message, hint)
        self.reason = reason


class DeviceError(VaultpolicyError):
    """The device cannot do what the plan asks; names the vault when there is one. `detail` is the
    message without that name, for a line that gives it already; `reason`, where the failure has one
    of its own, a stable kebab-case word with a `vaultpolicy explain` code (enforcer/codes.py)."""

    reason: str | None = None

    def __init__(self, message: str, vault: str | None = None, hint: str | None = None):
        super().__init__(f"vault `{vault}`: {message}" if vault else message, hint)
        self.vault = vault
        self.detail = message


class BackendUnavailable(DeviceError):
    """A kernel or TPM facility is missing (no fscrypt, no TPM, no swtpm binary)."""


class UsageError(VaultpolicyError):
    """The command line itself is wrong (a missing or impossible option), as argparse's own errors."""

    exit_code = 64  # status_codes.USAGE: this module imports nothing from the project
