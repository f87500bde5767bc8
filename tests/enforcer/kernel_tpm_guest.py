"""The device commands where the kernel has a TPM. Run inside the guest test_kernel_tpm_vm.py boots
(qemu's TPM TIS device, backed by a swtpm on the host: the guest's kernel makes /dev/tpmrm0), as
`pytest tests/enforcer/kernel_tpm_guest.py`; the file name keeps a plain pytest run on the host from
collecting it. Nothing stands in for /dev/tpmrm0 here: it is the kernel's resource manager."""

from __future__ import annotations

import os
import stat

import pytest

from enforcer import tcti
from enforcer.tpm import Tpm
from vp_helpers import make_plan, vault

pytestmark = pytest.mark.device


@pytest.fixture
def state_dir(tmp_path):
    state = tmp_path / "state"
    yield state
    tcti.stop_embedded(state)


def test_the_kernels_resource_manager_is_the_default(state_dir):
    assert stat.S_ISCHR(os.stat(tcti.TPMRM_DEVICE).st_mode), "the guest's kernel made /dev/tpmrm0"
    chosen = tcti.resolve_tcti(None, state_dir)
    assert chosen == f"device:{tcti.TPMRM_DEVICE}"
    assert not state_dir.exists(), "no embedded swtpm is started where the kernel has a TPM"
    with Tpm(chosen) as device:
        assert set(device.read_pcrs("sha256", [0, 7])) == {0, 7}


def test_embedded_names_the_state_dirs_swtpm_even_where_the_kernel_has_a_tpm(state_dir):
    chosen = tcti.resolve_tcti(tcti.EMBEDDED, state_dir)
    assert chosen.startswith("swtpm:host=127.0.0.1,port=") and (state_dir / "swtpm" / "instance.json").exists()
    assert tcti.resolve_tcti(None, state_dir) == f"device:{tcti.TPMRM_DEVICE}", "without --tpm the kernel's TPM"


def test_keys_sealed_in_the_embedded_swtpm_are_not_looked_for_in_the_kernels_tpm(device, capsys):
    """Keys sealed in the embedded swtpm (`--tpm embedded`, or before a TPM driver loaded): every command
    without --tpm went to /dev/tpmrm0, where no key loads, and status reported every vault drifting."""
    from vaultpolicy import cli

    options = ["--state-dir", str(device.state), "--root", str(device.root)]
    plan = make_plan([vault("config")], allow_unmeasured_boot=True)  # nothing measures a boot into the swtpm
    try:
        applied = cli.main(["device", "apply", str(device.sign(plan)), "--trust", str(device.trust), *options,
                            "--tpm", "embedded"])
        assert applied == 0, capsys.readouterr()
        capsys.readouterr()
        assert cli.main(["device", "status", *options]) == 1
        err = capsys.readouterr().err
        assert "this device's keys are sealed in the state dir's embedded swtpm (recorded by `device apply` in " in err
        assert f"without --tpm this command would use the TPM `device:{tcti.TPMRM_DEVICE}`" in err
        assert "= help: use the same --tpm as `device apply` did: --tpm embedded" in err
        assert cli.main(["device", "status", *options, "--tpm", "embedded"]) == 0, capsys.readouterr()
    finally:
        tcti.stop_embedded(device.state)
