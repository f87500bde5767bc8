"""Controller processes racing over one store: real `vaultpolicy controller` processes started together
at a barrier, round after round. A nonce or a verified quote is used once, a device's TPM counters never
go back, and a process that finds the store busy waits for the other's transaction: it never fails with
"database is locked" (an internal error)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from compiler.plan import encode_plan
from controller.quote_verify import parse_attest
from controller.store import Store
from enforcer import escrow, fscrypt
from enforcer.attest import AttestationTpm, Identity, Quote, storage_parent_binding

from .conftest import ESCROWED_PCRS, SoftTpm, cli_at_once, escrowed_plan, run_cli

ROUNDS = 8


@dataclass
class Controller:
    """Device `gw-1` on its own swtpm, enrolled with a controller whose store holds its `config` key."""

    tpm: SoftTpm
    identity: Identity
    work: Path

    @property
    def store(self) -> list[str]:
        return ["--store", str(self.work / "controller.db")]

    def quote(self, name: str) -> str:
        """A release quote over a fresh nonce, written to `name`."""
        code, nonce, err = run_cli(["controller", "nonce", "--device-id", "gw-1", "--plan", str(self.work / "plan.json"), *self.store])
        assert code == 0, err
        with AttestationTpm(self.tpm.tcti) as device:
            made = device.quote("gw-1", "release", bytes.fromhex(nonce), storage_parent_binding(self.identity.storage_public),
                                "sha256", ESCROWED_PCRS)
        (self.work / name).write_bytes(made.to_bytes())
        return str(self.work / name)

    def verify(self, quote: str) -> list[str]:
        return ["controller", "verify-quote", quote, "--plan", str(self.work / "plan.json"), *self.store]


@pytest.fixture
def controller(make_tpm, tmp_path) -> Controller:
    tpm = make_tpm()
    tpm.measure_boot()
    with AttestationTpm(tpm.tcti) as device:
        identity = device.identity("gw-1")
        _, values = device.read_pcrs("sha256", ESCROWED_PCRS)
    assert run_cli(["controller", "escrow-keygen", "-o", str(tmp_path / "escrow.key")])[0] == 0
    public = (tmp_path / "escrow.key.pub").read_text().strip()
    (tmp_path / "plan.json").write_bytes(encode_plan(escrowed_plan({i: v.hex() for i, v in values.items()}, public, "/persist")))
    made = Controller(tpm, identity, tmp_path)
    (tmp_path / "identity.json").write_bytes(identity.to_bytes())
    assert run_cli(["controller", "enroll", str(tmp_path / "identity.json"), *made.store])[0] == 0
    raw = bytes(range(64))
    blob = escrow.wrap_key(escrow.load_escrow_public(public, "escrow.key.pub"), "gw-1", "config", fscrypt.key_identifier(raw), raw)
    (tmp_path / "deposit.json").write_bytes(escrow.sign_deposit(tpm.tcti, "gw-1", [blob.to_bytes()], "sha256", ESCROWED_PCRS))
    assert run_cli(["controller", "escrow", str(tmp_path / "deposit.json"), "--ack-dir", str(tmp_path / "acks"), *made.store])[0] == 0
    return made


def test_one_quote_verified_by_two_processes_at_once_verifies_once(controller):
    for round_ in range(ROUNDS):
        quote = controller.quote(f"quote{round_}.json")
        results = sorted(cli_at_once([controller.verify(quote)] * 2))
        assert [code for code, _, _ in results] == [0, 1], results
        assert results[1][2].startswith("error: refused (nonce-used): nonce was used at "), results[1][2]


def test_an_older_quote_verified_beside_a_newer_one_never_moves_the_counters_back(controller):
    """Each quote has its own nonce. Verified one after the other, the older passes only before the
    newer. At once, each process used to check the counters before the other recorded its own: both
    passed, in any order, and the older quote's counters could be the ones kept."""
    for round_ in range(ROUNDS):
        older, newer = controller.quote(f"older{round_}.json"), controller.quote(f"newer{round_}.json")
        (newer_code, _, _), (older_code, _, older_err) = cli_at_once([controller.verify(newer), controller.verify(older)])
        assert newer_code == 0
        assert older_code == 0 or older_err.startswith("error: refused (counters-backwards): TPM counters went backwards"), older_err
        with Store(controller.work / "controller.db") as store:
            kept = store.device("gw-1").clock
        assert kept == parse_attest(Quote.from_bytes(Path(newer).read_bytes()).attest, "sha256").clock


def test_one_quote_released_by_two_processes_at_once_releases_once(controller):
    for round_ in range(ROUNDS):
        quote = controller.quote(f"quote{round_}.json")
        assert run_cli(controller.verify(quote))[0] == 0
        outputs = [controller.work / f"release{round_}-{n}.json" for n in (1, 2)]
        results = cli_at_once([["controller", "release", quote, "--escrow-key", str(controller.work / "escrow.key"),
                                "-o", str(output), *controller.store] for output in outputs])
        assert sorted(code for code, _, _ in results) == [0, 1], results
        assert [output.exists() for output in outputs] == [code == 0 for code, _, _ in results]
        assert any("keys were already released for this quote" in err for _, _, err in results)
