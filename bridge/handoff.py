"""The shim's hand-off directory: its file format, its writer (the shim), its reader (the bridge).

When the bridge cannot take a login, the shim leaves it here, one JSON file per event, named so
that names sort in arrival order: ``<received ms, 13 digits>-<pid>-<random>.json``, written as
``.tmp``, fsync'd, renamed, and the directory fsync'd. The bridge's intake
(:mod:`bridge.intake`) reads each file with :func:`read` and deletes it once its event is durable.

The writer runs in the shim, once per login, so this module imports nothing at the top beyond
``os``: the reader's imports load when it is first called.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs more than a run of the hook
    from pathlib import Path
    from typing import Any

# Fields: format, received_ms, query (SFTPGo's hook parameters), user (allow-listed fields only)
# and an optional event_id (added later, so v1 files without it still read): the id the hook
# sent, so a login that reached the bridge and was spooled too is de-duplicable by it.
# A PAM login (the hook's --pam mode) adds "source": "pam"; its query holds the facts that
# bridge.pam reads, and its user is {}.
FORMAT = "login-audit-bridge.hook-spool.v1"
SUFFIX = ".json"
# Where a file goes that can never become an event (the bridge's intake), or a login the bridge
# refused for good (the shim): kept for the operator, never taken in again.
REJECTED_DIR = "rejected"
# The shim writes the query and the allow-listed user fields: a few hundred bytes. Anything much
# larger did not come from it, and is not read into memory.
MAX_FILE_BYTES = 1024 * 1024
# Avro timestamp-millis as every reader decodes it: 1970-01-01 to 9999-12-31.
MAX_RECEIVED_MS = 253_402_300_799_999
# Opening never follows a link, never waits for a FIFO's writer, never leaks into a child.
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def write(directory: str, received_ms: int, data: bytes) -> str | None:
    """Writes one file durably (temp file, fsync, rename, fsync the directory); its path, or
    None if the disk would not take it."""
    name = f"{received_ms:013d}-{os.getpid()}-{os.urandom(4).hex()}"
    try:
        # Group access: the bridge, usually another user in a shared group, reads and deletes
        # these files. They hold only allow-listed fields, never the secrets of the user JSON.
        os.makedirs(directory, mode=0o770, exist_ok=True)
        temporary = os.path.join(directory, name + ".tmp")
        final = os.path.join(directory, name + SUFFIX)
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o660)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(temporary, final)
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        return None
    return final


def read(path: Path) -> dict[str, Any] | None:
    """The spool document in ``path``, checked; None if the file is gone. Raises MalformedInput
    for anything the shim would not have written."""
    import errno
    import json
    import stat

    from bridge.errors import MalformedInput

    try:
        fd = os.open(path, _OPEN_FLAGS)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise MalformedInput("a symbolic link, not a spool file (never followed)") from None
        raise MalformedInput(f"cannot be opened: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise MalformedInput(f"not a regular file ({_kind(info.st_mode, stat)})")
        if info.st_size > MAX_FILE_BYTES:
            raise MalformedInput(f"{info.st_size} bytes, over the {MAX_FILE_BYTES} byte limit")
        raw = os.read(fd, MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise MalformedInput(f"cannot be read: {exc.strerror}") from None
    finally:
        os.close(fd)
    if len(raw) > MAX_FILE_BYTES:
        raise MalformedInput(f"over the {MAX_FILE_BYTES} byte limit")
    try:
        data: dict[str, Any] = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise MalformedInput(f"not a JSON spool file: {exc}") from None
    valid = (
        isinstance(data, dict)
        and data.get("format") == FORMAT
        and isinstance(data.get("query"), dict)
        and all(isinstance(v, str) for v in data["query"].values())
        and isinstance(data.get("user"), dict)
        and type(data.get("received_ms")) is int  # not bool, which is an int too
    )
    if not valid:
        raise MalformedInput(f"not a {FORMAT} file")
    if not 0 <= data["received_ms"] <= MAX_RECEIVED_MS:
        raise MalformedInput("received_ms is out of range for an event time")
    return data


def _kind(mode: int, stat: Any) -> str:
    kinds = {
        stat.S_ISDIR: "a directory",
        stat.S_ISFIFO: "a FIFO",
        stat.S_ISCHR: "a character device",
        stat.S_ISBLK: "a block device",
        stat.S_ISSOCK: "a socket",
    }
    return next((name for test, name in kinds.items() if test(mode)), "not a file")


def received_ms_from_name(path: Path) -> int | None:
    head = path.name.split("-", 1)[0]
    # isdigit() alone also accepts digits int() refuses, such as "²" in a planted file's name.
    return int(head) if head.isascii() and head.isdigit() else None
