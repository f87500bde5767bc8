"""`vaultpolicy keygen -o KEY`: an Ed25519 signing key (KEY, mode 0600) and its public half (KEY.pub)."""

from __future__ import annotations

from pathlib import Path

from compiler.files import refuse_replacing_key, write_output
from compiler.signing import generate_key, key_id, private_key_pem, public_key_pem
from vaultpolicy import status_codes


def add_arguments(parser, key) -> None:
    parser.add_argument("-o", "--output", required=True, metavar="KEY", help="private key file; the public key goes to KEY.pub")
    parser.add_argument("--force", action="store_true", help="overwrite an existing key")


def run(args) -> int:
    private_path = Path(args.output)
    public_path = refuse_replacing_key(private_path, args.force, hint="pass --force to replace the key")
    key = generate_key()
    write_output(private_path, private_key_pem(key), mode=0o600)
    write_output(public_path, public_key_pem(key.public_key()))
    print(f"wrote {private_path} (private, 0600) and {public_path}; key id {key_id(key.public_key())}")
    return status_codes.SUCCESS
