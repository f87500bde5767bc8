"""`vaultpolicy keygen -o KEY`: an Ed25519 signing key (KEY, mode 0600) and its public half (KEY.pub)."""

from __future__ import annotations

import os
from pathlib import Path

from compiler.files import write_output
from compiler.signing import generate_key, key_id, private_key_pem, public_key_pem
from vaultpolicy import status_codes
from vaultpolicy.errors import InputError


def add_arguments(parser, key) -> None:
    parser.add_argument("-o", "--output", required=True, metavar="KEY", help="private key file; the public key goes to KEY.pub")
    parser.add_argument("--force", action="store_true", help="overwrite an existing key")


def run(args) -> int:
    private_path = Path(args.output)
    public_path = Path(f"{args.output}.pub")
    for path in (private_path, public_path):
        if os.path.isdir(path):  # --force cannot replace a directory with a key
            raise InputError(f"`{path}` is a directory", hint="name a file for the key; KEY.pub is written next to it")
    if not args.force and (private_path.exists() or public_path.exists()):
        raise InputError(f"`{private_path}` or `{public_path}` already exists", hint="pass --force to replace the key")
    key = generate_key()
    write_output(private_path, private_key_pem(key), mode=0o600)
    write_output(public_path, public_key_pem(key.public_key()))
    print(f"wrote {private_path} (private, 0600) and {public_path}; key id {key_id(key.public_key())}")
    return status_codes.SUCCESS
