"""The data folder holds secrets: it is the owner's alone.

The SQLite database (every email, role, employee id and profile id, the tokens'
``sub``), its ``-wal``/``-shm`` files, the blobs and the local JWT secret live
here. Folders are created 0700 and files 0600 whatever the umask, and a folder
found wider on start is narrowed, with a warning naming what was fixed.

Standard library only: ``config`` imports it.
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
from pathlib import Path

log = logging.getLogger("opsdash.datafolder")

DIR_MODE = 0o700
FILE_MODE = 0o600
_OTHERS = 0o077  # any bit for the group or for others


def private_dir(path: Path) -> Path:
    """``mkdir -p`` where every folder it creates is 0700 (``mkdir``'s mode ignores parents)."""
    missing: list[Path] = []
    current = path
    while not current.exists():
        missing.append(current)
        current = current.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=DIR_MODE)
        except FileExistsError:
            continue  # another process made it first
        os.chmod(folder, DIR_MODE)  # the umask may have narrowed mkdir's mode, never widened it
    return path


def private_file(path: Path) -> None:
    """Create ``path`` empty with mode 0600 if it does not exist (SQLite then keeps its mode)."""
    private_dir(path.parent)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
    except FileExistsError:
        return
    os.close(fd)


def secure_existing(root: Path) -> list[Path]:
    """Narrow every folder under ``root`` to 0700 and every file to 0600; returns what was wider.

    Symbolic links are neither followed nor changed. Nothing happens when ``root``
    does not exist yet.
    """
    if not root.is_dir():
        return []
    fixed: list[Path] = []

    def narrow(entry: Path, mode: int) -> None:
        try:
            info = entry.lstat()
            if stat.S_ISLNK(info.st_mode) or not info.st_mode & _OTHERS:
                return
            os.chmod(entry, mode)
            fixed.append(entry)
        except OSError as error:
            log.warning("cannot make %s private: %s", entry, error.strerror or error)

    narrow(root, DIR_MODE)
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            narrow(Path(folder) / name, DIR_MODE)
        for name in files:
            narrow(Path(folder) / name, FILE_MODE)
    if fixed:
        shown = ", ".join(str(path.relative_to(root)) or "." for path in fixed[:5])
        more = f" and {len(fixed) - 5} more" if len(fixed) > 5 else ""
        log.warning(
            "data folder %s was readable by other users: made %d entr%s private (%s%s)",
            root,
            len(fixed),
            "y" if len(fixed) == 1 else "ies",
            shown,
            more,
        )
    return fixed


def read_or_create_secret(folder: Path, name: str) -> str:
    """The secret in ``folder/name``, created on first use; never readable by anyone else.

    The secret is written to a temporary file opened with ``O_CREAT | O_EXCL`` and
    mode 0600, then linked into place: the name never points at a file with a
    wider mode, nor at a half-written one, and two processes starting at once
    agree on one secret (the second link fails and that process reads the first).
    """
    private_dir(folder)
    target = folder / name
    if not target.exists():
        temp = folder / f".{name}.{secrets.token_hex(8)}"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_urlsafe(48))
                handle.flush()
                os.fsync(handle.fileno())
            os.link(temp, target)
        except FileExistsError:
            pass
        finally:
            temp.unlink(missing_ok=True)
    if target.stat().st_mode & _OTHERS:
        secure_existing(folder)
    return target.read_text().strip()
