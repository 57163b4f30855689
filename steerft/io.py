"""Atomic file output: a reader never sees a half-written file, a killed run never leaves one.

Temporary files and folders are made beside their target with a recognisable name that holds the
host and process id of the writer (``.steerft-tmp~<host>~<pid>~<random>~<target name>``). Every
atomic write first removes such entries in its folder whose writer on this host has died, so a
run killed mid-write leaves nothing behind once the next run writes there. Outputs get the modes
of any file the user creates (0666/0777 less the umask), not ``mkstemp``'s private 0600/0700.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import tempfile
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

TEMP_PREFIX = ".steerft-tmp~"

_process_tempdir: tuple[int, Path] | None = None
_KEEP_UNTIL_EXIT = type("_KeepUntilExit", (), {})()  # owner of the exit-time clean-up finalizer


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call `write(file)` on a temporary file beside `path`, then rename it into place."""
    path = Path(path)
    tmp = _temp_name(path)
    # os.open applies the umask to 0o666, as for any file the user writes.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda handle: handle.write(text.encode()))


def write_json(path: str | os.PathLike, data: Any) -> Path:
    return write_text(path, json.dumps(data, indent=2, sort_keys=False, default=_jsonable) + "\n")


def read_json_object(path: str | os.PathLike, *, fix: str, error: type[Exception] = ValueError) -> dict[str, Any]:
    """The JSON object in `path`, or `error` with one line naming the file and `fix` (what the user should do)."""
    try:
        saved = json.loads(Path(path).read_text(encoding="utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise error(f"{path} is not valid JSON ({err}); {fix}.") from None
    if not isinstance(saved, dict):
        raise error(f"{path} does not hold a JSON object; {fix}.")
    return saved


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Fill a temporary directory, then move it to `path` in one rename (replacing any old one)."""
    path = Path(path)
    tmp = _temp_name(path)
    tmp.mkdir(mode=0o777)  # the umask applies, as for `mkdir`
    try:
        yield tmp
        if path.exists():
            old = _temp_name(path)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def sweep_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove temporaries in `folder` left by dead writers on this host; returns what was removed."""
    removed = []
    host = _host()
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for entry in entries:
        parts = entry.name[len(TEMP_PREFIX):].split("~", 3) if entry.name.startswith(TEMP_PREFIX) else []
        if len(parts) != 4 or parts[0] != host or not parts[1].isdigit() or _alive(int(parts[1])):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def use_process_tempdir() -> Path:
    """Send this process's temporary files (``tempfile``'s default folder) into a folder of its own.

    Libraries make temp folders that only their exit handlers remove (``import wandb`` makes
    ``tmp*wandb-media`` and ``tmp*wandb-artifacts`` even when tracking is off), so a killed run
    leaves them in the system temp folder for ever. Inside this process's own folder they are
    removed with it: at exit, after every library's own clean-up (finalizers run newest first),
    or, after a kill, by the next steerft process's sweep. Idempotent per process.
    """
    global _process_tempdir
    if _process_tempdir is not None and _process_tempdir[0] == os.getpid():
        return _process_tempdir[1]
    system = Path(tempfile.gettempdir())
    if _process_tempdir is not None:  # a forked child: make its own beside the parent's
        system = _process_tempdir[1].parent
    folder = _temp_name(system / "tmp")
    folder.mkdir(mode=0o700)
    weakref.finalize(_KEEP_UNTIL_EXIT, shutil.rmtree, folder, True)
    tempfile.tempdir = str(folder)
    _process_tempdir = (os.getpid(), folder)
    return folder


def _temp_name(path: Path) -> Path:
    """A fresh temporary path beside `path`, after clearing dead writers' leftovers there."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_temporaries(path.parent)
    return path.with_name(f"{TEMP_PREFIX}{_host()}~{os.getpid()}~{secrets.token_hex(4)}~{path.name}")


def _host() -> str:
    return socket.gethostname().replace("~", "-") or "localhost"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True
