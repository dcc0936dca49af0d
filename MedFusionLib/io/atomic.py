"""Atomic output: a file appears whole or not at all, never over an input, never over an existing
file unless asked, and what a killed writer left behind is cleaned up on the next run."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from ..errors import InputError, MedFusionError
from .images import PathLike



def _resolve(name: str) -> str:
    return os.path.realpath(os.path.abspath(name))


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)  # also catches hard links
    except OSError:
        return _resolve(a) == _resolve(b)


def _check_destination(destination: str, overwrite: bool, protected: Sequence[str], label: str) -> None:
    """Refuse a destination that is protected, a folder, or (without ``overwrite``) existing."""
    for guarded in protected:
        if _same_file(destination, guarded):
            raise InputError(
                f"{label}: refusing to write over the input {guarded} (it is the same file)"
            )
        if os.path.isdir(guarded) and os.path.lexists(destination):
            parent = os.path.dirname(_resolve(destination))
            if _same_file(parent, guarded):
                raise InputError(
                    f"{label}: refusing to replace a file inside the input folder {guarded}"
                )
    if os.path.isdir(destination):
        raise InputError(f"{label}: is a directory, expected a file name")
    if os.path.lexists(destination) and not overwrite:
        raise InputError(f"{label}: already exists; pass overwrite=True to replace it")


def _fsync_file(name: str) -> None:
    with open(name, "rb") as handle:
        os.fsync(handle.fileno())


def _fsync_directory(folder: str) -> None:
    # Makes the rename itself durable; not possible (nor needed) on Windows.
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def _move_into_place(source: str, destination: str, overwrite: bool) -> None:
    if overwrite:
        os.replace(source, destination)
        return
    # A hard link fails if the destination appeared meanwhile, so no file
    # created by someone else after our check is ever clobbered.
    try:
        os.link(source, destination)
    except FileExistsError:
        raise InputError(f"{destination}: already exists; pass overwrite=True to replace it") from None
    except OSError:
        if os.path.lexists(destination):
            raise InputError(f"{destination}: already exists; pass overwrite=True to replace it") from None
        os.replace(source, destination)  # file system without hard links
        return
    os.unlink(source)


def check_output_path(path: PathLike, overwrite: bool = False, protected_paths: Iterable[PathLike] = ()) -> str:
    """Check, before any long work, that ``path`` can be written; return its folder.

    The same checks :func:`atomic_output` makes when it starts, so a caller can refuse a
    bad destination before spending minutes on a fusion whose result could not be kept.

    :param path: the file to write.
    :param overwrite: whether an existing file at ``path`` may be replaced.
    :param protected_paths: inputs that ``path`` may never be.
    :raises InputError: folder path, missing/unwritable folder, an input, or existing without ``overwrite``.
    """
    name = os.fspath(path)
    if not os.path.basename(name):
        raise InputError(f"{name}: expected a file name, got a folder path")
    folder = os.path.dirname(os.path.abspath(name))
    if not os.path.isdir(folder):
        raise InputError(
            f"{folder}: the output folder does not exist"
            if not os.path.exists(folder)
            else f"{folder}: the output folder is not a directory"
        )
    _check_destination(name, overwrite, [os.fspath(p) for p in protected_paths], name)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"{folder}: the output folder is not writable")
    return folder


def _temporary_prefix(name: str) -> str:
    """Prefix of :func:`atomic_output`'s private folders for ``name``: ``.<basename>.<pid>.``."""
    return f".{os.path.basename(name)}.{os.getpid()}."


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temporaries(path: PathLike) -> list[str]:
    """Remove the hidden temporary folders that killed writers of ``path`` left behind.

    :func:`atomic_output` writes into ``.<name>.<pid>.<random>.tmp/`` next to ``path``; a
    process killed mid-write (SIGKILL, power cut) cannot remove it. ``medfusion fuse`` and
    :func:`~MedFusionLib.batch.run_batch` call this first, so a re-run leaves only finished
    files. Only folders of exactly that form for this file name whose process no longer runs
    (on this machine) are removed, so a concurrent writer of the same file is never disturbed.

    :param path: the final file whose leftovers to remove.
    :returns: the names removed.
    """
    name = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(name))
    pattern = re.compile(rf"^\.{re.escape(os.path.basename(name))}\.(\d+)\.[A-Za-z0-9_]+\.tmp$")
    removed = []
    try:
        entries = os.listdir(folder)
    except OSError:
        return removed
    for entry in entries:
        match = pattern.match(entry)
        candidate = os.path.join(folder, entry)
        if match is None or not os.path.isdir(candidate) or os.path.islink(candidate):
            continue
        if _process_alive(int(match.group(1))):
            continue
        shutil.rmtree(candidate, ignore_errors=True)
        removed.append(entry)
    return removed


@contextlib.contextmanager
def atomic_output(
    path: PathLike,
    overwrite: bool = False,
    protected_paths: Iterable[PathLike] = (),
) -> Iterator[Path]:
    """Context manager giving a temporary path to write ``path`` atomically.

    The yielded path has the same file name as ``path`` (so writers that pick
    the format from the extension, or that add side files such as a MetaImage
    ``.raw``, behave as for the real name) but lies in a private hidden folder
    created next to ``path``, on the same file system. On normal exit every
    file written there is flushed to disk and renamed into the destination
    folder (side files first, ``path`` last); on an exception the temporary
    folder is removed and nothing appears at ``path``. If the process is
    killed, at most a hidden ``.<name>.<pid>.*.tmp`` folder remains (see
    :func:`remove_stale_temporaries`).

    Example::

        with atomic_output("scores.csv") as temporary:
            temporary.write_text(table)

    :param path: the final file.
    :param overwrite: allow replacing an existing file at ``path`` (or a side file).
    :param protected_paths: files that may never be replaced (the inputs).
    :raises InputError: refused destination, missing or unwritable folder.
    """
    name = os.fspath(path)
    protected = [os.fspath(p) for p in protected_paths]
    folder = check_output_path(name, overwrite, protected)
    try:
        work = tempfile.mkdtemp(prefix=_temporary_prefix(name), suffix=".tmp", dir=folder)
    except OSError as exc:
        raise InputError(f"{folder}: cannot create a file in the output folder ({exc.strerror})") from None
    temporary = os.path.join(work, os.path.basename(name))
    try:
        yield Path(temporary)
        if not os.path.exists(temporary):
            raise MedFusionError(f"{name}: the writer produced no file")
        produced = sorted(os.listdir(work), key=lambda f: f == os.path.basename(name))
        destinations = [os.path.join(folder, f) for f in produced]
        for destination in destinations:  # side files must pass the same checks
            _check_destination(destination, overwrite, protected, destination)
        for produced_name, destination in zip(produced, destinations):
            source = os.path.join(work, produced_name)
            _fsync_file(source)
            _move_into_place(source, destination, overwrite)
        _fsync_directory(folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)
