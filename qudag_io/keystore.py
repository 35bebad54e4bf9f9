"""Keystore files on disk: ``write_keystore`` / ``read_keystore`` around
``qudag_core.keystore``.

Writing is atomic and private: the sealed bytes go to a temporary file in the same
directory, created with ``O_CREAT | O_EXCL`` and mode 0600 (then ``fchmod`` 0600, so
the umask cannot loosen or tighten it), written, ``fsync``-ed, then moved into place
and the directory ``fsync``-ed.  Without ``overwrite=True`` the move is a ``link()``,
which fails atomically if the target exists (``FileExistsError``); filesystems without
hard links fall back to an existence check before ``rename()``.

Reading refuses, like ssh does for private keys, a keystore that group or others can
access or that another user owns (``InsecureKeystoreFile``, naming the path, mode and
the fix).  ``insecure_ok=True`` reads such a file anyway and logs a warning with the
path, mode and owner only.  Something that is not a regular file (a FIFO, a device, a
directory) is always refused; it is opened ``O_NONBLOCK`` so a FIFO cannot hang us.  Files larger than ``MAX_FILE_SIZE`` are refused
as corrupt without being read whole.
"""
from __future__ import annotations

import logging
import os
import secrets as _secrets
import stat

from qudag_core.keystore import (
    DEFAULT_KDF_PARAMS,
    KeystoreCorrupt,
    KeystoreError,
    ScryptParams,
    open_keystore,
    seal_keystore,
)

__all__ = ["InsecureKeystoreFile", "MAX_FILE_SIZE", "write_keystore", "read_keystore"]

log = logging.getLogger(__name__)

MAX_FILE_SIZE = 16 * 1024 * 1024
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


class InsecureKeystoreFile(KeystoreError):
    """The keystore file is accessible to other users or is not ours."""


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | _O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_keystore(
    path: str | os.PathLike,
    secrets: dict[str, bytes],
    passphrase: bytes,
    rng=os.urandom,
    kdf_params: ScryptParams = DEFAULT_KDF_PARAMS,
    *,
    overwrite: bool = False,
) -> None:
    """Seal ``secrets`` under ``passphrase`` and write them to ``path`` (mode 0600)."""
    path = os.fspath(path)
    if not overwrite and os.path.lexists(path):
        raise FileExistsError(f"keystore {path} already exists (pass overwrite=True to replace it)")
    blob = seal_keystore(secrets, passphrase, rng, kdf_params=kdf_params)
    directory = os.path.dirname(path) or "."
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp-{_secrets.token_hex(8)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_CLOEXEC | _O_NOFOLLOW, 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)
            view = memoryview(blob)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise FileExistsError(f"keystore {path} already exists (pass overwrite=True to replace it)") from None
            except OSError:
                # No hard links here (some FUSE / network filesystems): check, then rename.
                if os.path.lexists(path):
                    raise FileExistsError(f"keystore {path} already exists (pass overwrite=True to replace it)") from None
                os.rename(tmp, path)
    finally:
        # After replace/rename the name is gone; after link() or a failure it is removed.
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
    _fsync_dir(directory)


def read_keystore(path: str | os.PathLike, passphrase: bytes, *, insecure_ok: bool = False) -> dict[str, bytes]:
    """Read and open the keystore at ``path``.  Raises ``InsecureKeystoreFile`` (see the
    module docstring), ``WrongPassphrase``, ``KeystoreCorrupt`` or ``OSError``."""
    path = os.fspath(path)
    fd = os.open(path, os.O_RDONLY | _O_CLOEXEC | getattr(os, "O_NONBLOCK", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InsecureKeystoreFile(f"keystore {path} is not a regular file")
        mode = stat.S_IMODE(st.st_mode)
        problems = []
        if mode & 0o077:
            problems.append(f"is accessible by group/others (mode {mode:04o}); run: chmod 600 {path}")
        if hasattr(os, "geteuid") and st.st_uid != os.geteuid():
            problems.append(f"is owned by uid {st.st_uid}, not by us (uid {os.geteuid()})")
        if problems:
            if not insecure_ok:
                raise InsecureKeystoreFile(
                    f"refusing keystore {path}: it " + "; it ".join(problems) + " (or pass insecure_ok=True)"
                )
            log.warning("reading insecure keystore %s: it %s", path, "; it ".join(problems))
        if st.st_size > MAX_FILE_SIZE:
            raise KeystoreCorrupt(f"keystore {path} is {st.st_size} bytes, larger than any keystore ({MAX_FILE_SIZE})")
        chunks = []
        total = 0
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            total += len(chunk)
            if total > MAX_FILE_SIZE:
                raise KeystoreCorrupt(f"keystore {path} grew past {MAX_FILE_SIZE} bytes while reading")
            chunks.append(chunk)
    finally:
        os.close(fd)
    return open_keystore(b"".join(chunks), passphrase)
