"""The node identity: created once with safe permissions, stable across restarts, refused when unsafe."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from fednode.node.errors import ExitCode, IdentityError
from fednode.node.identity import (
    create_identity,
    identity_path,
    load_identity,
    load_or_create_identity,
    peer_id_from_public_key,
    verify_signature,
)


def test_created_once_then_loaded_unchanged(tmp_path: Path) -> None:
    first, created = load_or_create_identity(tmp_path)
    second, created_again = load_or_create_identity(tmp_path)
    assert created and not created_again
    assert first.public_key == second.public_key and first.peer_id == second.peer_id
    assert stat.S_IMODE(identity_path(tmp_path).stat().st_mode) == 0o600
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_peer_id_matches_libp2p_derivation(tmp_path: Path) -> None:
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.peer.id import ID

    ident, _ = load_or_create_identity(tmp_path)
    key_pair = create_new_key_pair(ident.private_seed)
    assert ID.from_pubkey(key_pair.public_key).to_base58() == ident.peer_id
    assert peer_id_from_public_key(ident.public_key).startswith("12D3KooW")
    # Cached by key, for any bytes-like form of it; a malformed key still raises every time.
    for form in (bytearray(ident.public_key), memoryview(ident.public_key)):
        assert peer_id_from_public_key(form) == ident.peer_id
    for _ in range(2):
        with pytest.raises(ValueError):
            peer_id_from_public_key(ident.public_key[:31])


def test_signatures_verify_only_for_the_signed_message(tmp_path: Path) -> None:
    ident, _ = load_or_create_identity(tmp_path)
    signature = ident.sign(b"round 7")
    assert verify_signature(ident.public_key, signature, b"round 7")
    assert not verify_signature(ident.public_key, signature, b"round 8")
    assert not verify_signature(b"\x00" * 32, signature, b"round 7")


def test_group_readable_key_is_refused(tmp_path: Path) -> None:
    path = identity_path(tmp_path)
    create_identity(path)
    os.chmod(path, 0o644)
    with pytest.raises(IdentityError, match="chmod 600"):
        load_identity(path)


def test_garbage_key_is_refused_with_instructions(tmp_path: Path) -> None:
    path = identity_path(tmp_path)
    path.write_bytes(b"not a key")
    os.chmod(path, 0o600)
    with pytest.raises(IdentityError, match="not a PEM Ed25519 private key") as info:
        load_identity(path)
    assert info.value.exit_code == ExitCode.IDENTITY


def test_create_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    path = identity_path(tmp_path)
    original = create_identity(path)
    with pytest.raises(IdentityError, match="--force"):
        create_identity(path)
    replaced = create_identity(path, overwrite=True)
    assert replaced.peer_id != original.peer_id


def test_cli_identity_create_and_show(tmp_path: Path, cli) -> None:
    import json

    created = cli("identity", "create", "--state-dir", str(tmp_path), "--format", "json")
    assert created.returncode == 0, created.stderr
    shown = cli("identity", "show", "--state-dir", str(tmp_path), "--format", "json")
    assert json.loads(shown.stdout)["peer_id"] == json.loads(created.stdout)["peer_id"]
    missing = cli("identity", "show", "--state-dir", str(tmp_path / "empty"))
    assert missing.returncode == ExitCode.IDENTITY and "fednode identity create" in missing.stderr


def test_public_key_round_trips_through_the_peer_id(tmp_path: Path) -> None:
    from fednode.node.identity import public_key_from_peer_id

    ident, _ = load_or_create_identity(tmp_path)
    assert public_key_from_peer_id(ident.peer_id) == ident.public_key
    assert public_key_from_peer_id("QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N") is None
    assert public_key_from_peer_id("not base58 0OIl") is None
