"""qudag_io.keystore: atomic 0600 writes, no silent overwrite, ssh-style permission
refusal on read.  Real files in a pytest tmp_path; scrypt n=2**4 for speed."""
from __future__ import annotations

import logging
import os
import stat

import pytest

from qudag_core.keystore import KeystoreCorrupt, ScryptParams, WrongPassphrase
from qudag_io.keystore import MAX_FILE_SIZE, InsecureKeystoreFile, read_keystore, write_keystore

FAST = ScryptParams(2**4, 1, 1)
SECRETS = {"mldsa65-seed": b"\x11" * 32, "xwing-seed": b"\x22" * 32}
PASS = b"hunter2 but longer"


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _write(path, rng, **kw):
    write_keystore(path, SECRETS, PASS, rng, FAST, **kw)


def test_round_trip(tmp_path, rng):
    path = tmp_path / "identity.qks"
    _write(path, rng)
    assert read_keystore(path, PASS) == SECRETS
    assert read_keystore(str(path), PASS) == SECRETS
    assert os.listdir(tmp_path) == ["identity.qks"], "temporary file left behind"


def test_default_rng_and_params(tmp_path):
    path = tmp_path / "k"
    write_keystore(path, SECRETS, PASS)
    assert read_keystore(path, PASS) == SECRETS


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077, 0o277])
def test_mode_is_0600_whatever_the_umask(tmp_path, rng, umask):
    old = os.umask(umask)
    try:
        path = tmp_path / "k"
        _write(path, rng)
        assert _mode(path) == 0o600
        _write(path, rng, overwrite=True)
        assert _mode(path) == 0o600
    finally:
        os.umask(old)
    assert read_keystore(path, PASS) == SECRETS


def test_refuses_to_overwrite(tmp_path, rng):
    path = tmp_path / "k"
    _write(path, rng)
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_keystore(path, {"other": b"x"}, PASS, rng, FAST)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["k"]
    write_keystore(path, {"other": b"x"}, PASS, rng, FAST, overwrite=True)
    assert read_keystore(path, PASS) == {"other": b"x"}
    assert sorted(os.listdir(tmp_path)) == ["k"]


def test_refuses_to_overwrite_a_symlink(tmp_path, rng):
    target = tmp_path / "elsewhere"
    target.write_bytes(b"precious")
    link = tmp_path / "k"
    link.symlink_to(target)
    with pytest.raises(FileExistsError):
        _write(link, rng)
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nothing-here")
    with pytest.raises(FileExistsError):
        _write(dangling, rng)
    assert target.read_bytes() == b"precious"
    assert not (tmp_path / "nothing-here").exists()


def test_failed_write_leaves_nothing(tmp_path, rng):
    with pytest.raises(FileNotFoundError):
        _write(tmp_path / "no-such-dir" / "k", rng)
    with pytest.raises(ValueError):
        write_keystore(tmp_path / "k", {"": b"bad name"}, PASS, rng, FAST)
    assert os.listdir(tmp_path) == []


def test_wrong_passphrase_and_corrupt_file(tmp_path, rng):
    path = tmp_path / "k"
    _write(path, rng)
    with pytest.raises(WrongPassphrase):
        read_keystore(path, b"nope")
    data = bytearray(path.read_bytes())
    data[60] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(KeystoreCorrupt):
        read_keystore(path, PASS)
    path.write_bytes(bytes(data[:30]))
    with pytest.raises(KeystoreCorrupt):
        read_keystore(path, PASS)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660, 0o666, 0o601, 0o610], ids=lambda m: f"{m:04o}")
def test_group_or_world_access_is_refused(tmp_path, rng, mode, caplog):
    path = tmp_path / "k"
    _write(path, rng)
    os.chmod(path, mode)
    with pytest.raises(InsecureKeystoreFile, match=f"{mode:04o}.*chmod 600"):
        read_keystore(path, PASS)
    with caplog.at_level(logging.WARNING, logger="qudag_io.keystore"):
        assert read_keystore(path, PASS, insecure_ok=True) == SECRETS
    text = caplog.text
    assert str(path) in text and f"{mode:04o}" in text
    for value in SECRETS.values():
        assert value.hex() not in text and repr(value) not in text
    assert PASS.decode() not in text


def test_owner_only_modes_are_fine(tmp_path, rng):
    path = tmp_path / "k"
    _write(path, rng)
    for mode in (0o400, 0o600, 0o700):
        os.chmod(path, mode)
        assert read_keystore(path, PASS) == SECRETS


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to chown")
def test_foreign_owner_is_refused(tmp_path, rng):
    path = tmp_path / "k"
    _write(path, rng)
    os.chown(path, 12345, -1)
    with pytest.raises(InsecureKeystoreFile, match="uid 12345"):
        read_keystore(path, PASS)
    assert read_keystore(path, PASS, insecure_ok=True) == SECRETS


def test_not_a_regular_file(tmp_path):
    with pytest.raises(InsecureKeystoreFile, match="regular file"):
        read_keystore(tmp_path, PASS)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(InsecureKeystoreFile, match="regular file"):
        read_keystore(fifo, PASS, insecure_ok=True)  # returns at once: opened O_NONBLOCK


def test_oversized_file_is_refused_unread(tmp_path):
    path = tmp_path / "big"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.ftruncate(fd, MAX_FILE_SIZE + 1)  # sparse: no real disk or memory used
    finally:
        os.close(fd)
    with pytest.raises(KeystoreCorrupt, match="larger than"):
        read_keystore(path, PASS)
