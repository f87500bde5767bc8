"""Flush what a killed enforcer left loaded in a TPM that has no resource manager (S11).

The kernel's resource manager (`/dev/tpmrm0`) flushes a client's objects and sessions when it
disconnects. A bare TPM connection (`swtpm:` as the embedded default and the tests use it, or
`device:/dev/tpm0`) does not: an enforcer killed between seal and flush — the crash test does this
on purpose — leaves its storage primary loaded, and after three such kills the TPM answers "out of
memory for object contexts". Such a TPM serves one client at a time, so whatever is loaded when a
command connects belongs to no live client and is flushed before the command starts.

(This belongs with enforcer/tpm.py's `Tpm`; it lives here until that module offers it.)
"""

from __future__ import annotations

from vaultpolicy.errors import BackendUnavailable

_MANAGED_PREFIXES = ("device:/dev/tpmrm", "tabrmd")


def has_resource_manager(tcti: str) -> bool:
    return tcti.startswith(_MANAGED_PREFIXES)


def flush_leftovers(tcti: str) -> int:
    """Flush every transient object and session on an unmanaged TPM; returns how many."""
    if has_resource_manager(tcti):
        return 0
    try:
        from tpm2_pytss import ESAPI, TPM2_CAP, TPM2_HT, TSS2_Exception
    except ImportError as exc:
        raise BackendUnavailable(f"tpm2-pytss is not installed ({exc})") from None
    flushed = 0
    try:
        esys = ESAPI(tcti)
    except Exception as exc:  # the TSS raises its own types for "cannot connect"
        raise BackendUnavailable(f"cannot open the TPM `{tcti}`: {exc}") from None
    try:
        for kind in (TPM2_HT.TRANSIENT, TPM2_HT.LOADED_SESSION, TPM2_HT.SAVED_SESSION):
            _, capability = esys.get_capability(TPM2_CAP.HANDLES, int(kind) << 24, 256)
            for handle in capability.data.handles:
                try:
                    esys.flush_context(esys.tr_from_tpmpublic(handle))
                except TSS2_Exception:
                    continue  # gone meanwhile, or a kind this TPM will not flush: nothing to leak
                flushed += 1
    finally:
        esys.close()
    return flushed
