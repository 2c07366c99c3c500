"""Files in and out: a file that cannot be read is a `UserError` naming it, and every file is written
whole or not at all (written beside its place, then renamed over it), so a crash or a full disk never
leaves a half-written file, and never destroys the one that was there."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, Sequence

from .errors import UserError

RUN_MARKER = ".rewardstack-run"  # in every output folder a command made: {"command": ...}
UMASK = os.umask(0)  # read once at import (reading it sets it, which is not thread-safe), then restored
os.umask(UMASK)


def read_json(path: str | Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: invalid JSON ({err})") from None


def load_tensors(path: str | Path) -> dict:
    """The tensors of a safetensors file."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise UserError(f"{path}: missing") from None
    except Exception as err:  # safetensors raises its own error type for truncated or corrupt files
        raise UserError(f"{path}: not a readable safetensors file ({err})") from None


def load_torch(path: str | Path, allowed: Sequence[type] = ()) -> Any:
    """A file written by torch.save, read with weights_only=True: tensors, plain containers and the
    `allowed` classes only, no code."""
    import torch

    try:
        with torch.serialization.safe_globals(list(allowed)):
            return torch.load(path, weights_only=True)
    except FileNotFoundError:
        raise UserError(f"{path}: missing") from None
    except Exception as err:  # pickle, zip and torch errors of a truncated or corrupt file
        raise UserError(f"{path}: not a readable checkpoint file ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from None


@contextlib.contextmanager
def atomic_path(path: str | Path, directory: bool = False) -> Iterator[Path]:
    """A fresh temporary path beside `path` (a folder when `directory`) to write into; on success it
    replaces `path`, on any error it is removed and `path` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if directory:
        temporary = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    else:
        handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
        os.close(handle)
        temporary = Path(name)
    try:
        yield temporary
        os.chmod(temporary, (0o777 if directory else 0o666) & ~UMASK)  # as a plain mkdir or open would have made it
        if directory and path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            path.rename(old)
            temporary.rename(path)
            shutil.rmtree(old)
        else:
            temporary.replace(path)
    except BaseException:
        if temporary.is_dir():
            shutil.rmtree(temporary, ignore_errors=True)
        else:
            temporary.unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> None:
    """Write `text` to `path` atomically."""
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


def write_json(path: str | Path, value: Any) -> None:
    write_text(path, json.dumps(value, indent=2) + "\n")


def check_output_file(path: str | Path, option: str) -> None:
    """Before any work: `path` can be written (its folder exists or can be made, and it is not a folder)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{option} {path}: is a folder, not a file")
    _check_creatable(path.parent, option, path)


def check_output_dir(path: str | Path, option: str, command: str, resume: bool = False) -> None:
    """Before any work: `path` is empty, missing, or an output folder of this command (a resumable run of
    ours when `resume`); a folder holding anything else is never written into."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{option} {path}: is a file, not a folder")
    if not path.exists():
        _check_creatable(path, option, path)
        return
    entries = sorted(p.name for p in path.iterdir())
    if not entries:
        _check_creatable(path, option, path)
        return
    marker = read_json(path / RUN_MARKER) if (path / RUN_MARKER).exists() else None
    owner = marker.get("command") if isinstance(marker, dict) else None
    if owner is None and not resume:
        raise UserError(f"{option} {path}: holds files that are not a rewardstack {command} run ({', '.join(entries[:3])}"
                        f"{', …' if len(entries) > 3 else ''}); choose an empty or new folder")
    if owner is not None and owner != command:
        raise UserError(f"{option} {path}: holds a rewardstack {owner} run, not a {command} run; choose another folder")
    _check_creatable(path, option, path)


def mark_output_dir(path: str | Path, command: str) -> None:
    """Make `path` and mark it as an output folder of `command`."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if not (path / RUN_MARKER).exists():
        write_json(path / RUN_MARKER, {"command": command})


def _check_creatable(folder: Path, option: str, shown: Path) -> None:
    """`folder` exists and takes new files, or can be made: its nearest existing ancestor is a writable folder."""
    existing = folder
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{option} {shown}: {existing} is a file, so nothing can be written under it")
    try:
        probe = tempfile.NamedTemporaryFile(dir=existing, prefix=".rewardstack-probe-")
        probe.close()
    except OSError as err:
        raise UserError(f"{option} {shown}: cannot write in {existing} ({err.strerror})") from None


def describe_os_error(err: OSError) -> str:
    """One line for a failed read or write, with what to do about a full disk."""
    where = f"{err.filename}: " if err.filename else ""
    hint = "; free some space and run the command again (runs continue with --resume)" if err.errno == errno.ENOSPC else ""
    return f"{where}{err.strerror or err}{hint}"


def explain_load_error(folder: str | Path, what: str, err: Exception) -> UserError:
    """A UserError for a folder a library could not load: names the first of its JSON or safetensors
    files that is damaged, or else repeats the library's own message."""
    folder = Path(folder)
    for path in sorted(folder.glob("*.json")) + sorted(folder.glob("*.safetensors")):
        try:
            read_json(path) if path.suffix == ".json" else load_tensors(path)
        except UserError as damaged:
            return damaged
    first_line = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return UserError(f"{folder}: cannot load the {what} ({type(err).__name__}: {first_line})")
