"""The state folder is private to the user that runs the exchange: folders 0700, files 0600.

Everything the exchange keeps there (the master key, the embedded servers' data, credentials and
logs, delivered files, published catalogs) is created with those modes, whatever the umask, and
`seal_state` takes an existing folder back to them on start (a folder made by an earlier dataex
was world-readable).

One exception, when the exchange runs as root: PostgreSQL refuses to run as root, so the
embedded server runs as the system user ``embedded_postgres`` and must reach its data folder
``<state>/postgres/data``. The state folder and ``<state>/postgres`` are then 0710 with the group
``embedded_postgres``: that user may pass through them (not list them, not read a file in them)
and nobody else may even pass. The data folder and the socket folder below are that user's own,
0700. Folders *above* the state folder that the server user could not pass get the one bit it
needs, ``o+x`` (pass, not list); the state folder itself stays closed to everyone else.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, Literal

SERVER_USER = "embedded_postgres"  # the embedded PostgreSQL's user when we run as root
DIR_MODE = 0o700
FILE_MODE = 0o600
SERVER_PATH_MODE = 0o710  # the state folder and <state>/postgres, group SERVER_USER, as root

_walked: set[Path] = set()
_group: list[int] = []  # SERVER_USER's group, once found


def server_group() -> int | None:
    """The group of `SERVER_USER` when this process runs as root and the user exists."""
    if os.geteuid() != 0:
        return None
    if not _group:
        try:
            _group.append(pwd.getpwnam(SERVER_USER).pw_gid)
        except KeyError:
            return None
    return _group[0]


def private_dirs(path: Path) -> Path:
    """``mkdir -p`` where each folder created is 0700 (a umask only ever takes bits away)."""
    missing: list[Path] = []
    at = path
    while not at.exists() and at != at.parent:
        missing.append(at)
        at = at.parent
    for folder in reversed(missing):
        with contextlib.suppress(FileExistsError):
            folder.mkdir(mode=DIR_MODE)
    return path


def open_private(path: Path, mode: Literal["wb", "ab"] = "wb") -> BinaryIO:
    """A file opened for writing, created 0600; an existing one is brought to 0600."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if mode == "ab" else os.O_TRUNC)
    fd = os.open(path, flags | os.O_CLOEXEC, FILE_MODE)
    try:
        _fchmod(fd, path)
        return os.fdopen(fd, mode)
    except BaseException:
        os.close(fd)
        raise


def write_private(path: Path, data: str | bytes, *, owner: tuple[int, int] | None = None) -> None:
    """Write a file whole, 0600, replacing any earlier one at once (through a temporary file
    beside it). ``owner``: (uid, gid) to give it before it takes its name."""
    temp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data.encode() if isinstance(data, str) else data)
            handle.flush()
            os.fsync(handle.fileno())
        if owner is not None:
            os.chown(temp, *owner)
        temp.replace(path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def secret_file(path: Path) -> tuple[str, bool]:
    """The secret kept in ``path`` (one line), made once with `secrets.token_urlsafe` (URL-safe:
    it needs no escaping in a URL or a config file); and whether it was made now."""
    made = False
    with contextlib.suppress(FileExistsError):
        # O_EXCL: two processes starting together never keep two different secrets.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(32) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        made = True
    tighten(path)
    value = read_secret(path)
    if value is None:
        raise ValueError(f"{path} is empty: remove it and start again to make a new secret")
    return value, made


def read_secret(path: Path) -> str | None:
    """The first line of a secret file, or None when there is none (yet)."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return None
    return lines[0].strip() if lines and lines[0].strip() else None


def tighten(path: Path) -> None:
    """Take away every permission beyond the owner's: a folder to 0700 (0710 when its group is
    `SERVER_USER`'s, see the module's note), a file to 0600. Links and sockets are left as
    they are."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(info.st_mode):
        allowed = SERVER_PATH_MODE if info.st_gid == server_group() else DIR_MODE
        wanted = (stat.S_IMODE(info.st_mode) & allowed) | DIR_MODE
    elif stat.S_ISREG(info.st_mode):
        wanted = FILE_MODE
    else:
        return
    if stat.S_IMODE(info.st_mode) != wanted:
        try:
            path.chmod(wanted)
        except PermissionError:
            _log("warning", "state_path_not_tightened", path=str(path), reason="not its owner")


def seal_state(state: Path, *, walk: bool = False) -> Path:
    """Make the state folder private: created 0700 when missing, tightened when it exists.

    ``walk``: every folder and file in it too (once per process and folder): a folder made by
    an earlier dataex was open to all. A PostgreSQL data folder is left to its server, which
    makes its files 0600 and refuses to start on a data folder that others may open."""
    private_dirs(state)
    tighten(state)
    resolved = state.resolve()
    if walk and resolved not in _walked:
        for path in _tree(resolved):
            tighten(path)
        _walked.add(resolved)
    return state


def _tree(root: Path) -> Iterator[Path]:
    for folder, dirs, files in os.walk(root):  # symbolic links are not followed
        dirs[:] = [d for d in dirs if not (Path(folder, d) / "PG_VERSION").exists()]
        for name in (*dirs, *files):
            yield Path(folder, name)


def let_pass(path: Path, uid: int, gid: int) -> None:
    """Let the user (uid, gid), which has no supplementary groups, pass through ``path`` and each
    folder above it: ``o+x`` where it could not already (pass, never list)."""
    for folder in (path, *path.parents):
        info = folder.stat()
        if info.st_uid == uid:
            can = bool(info.st_mode & stat.S_IXUSR)
        elif info.st_gid == gid:
            can = bool(info.st_mode & stat.S_IXGRP)
        else:
            can = bool(info.st_mode & stat.S_IXOTH)
        if not can:
            folder.chmod(stat.S_IMODE(info.st_mode) | stat.S_IXOTH)
            _log("info", "folder_opened_to_pass", path=str(folder), user=SERVER_USER)


def _fchmod(fd: int, path: Path) -> None:
    if stat.S_IMODE(os.fstat(fd).st_mode) != FILE_MODE:
        try:
            os.fchmod(fd, FILE_MODE)
        except PermissionError:
            _log("warning", "state_path_not_tightened", path=str(path), reason="not its owner")


def _log(level: str, event: str, **fields: Any) -> None:
    # Imported here: the offline commands that read the master key load no logging set-up.
    from exchange.platform.logging import get_logger

    getattr(get_logger(__name__), level)(event, **fields)
