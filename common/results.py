"""Atomic writes of results tables, JSON and checkpoints.

Every file is written to a temporary file in the same folder, flushed and fsynced, then
renamed over the target: a crash at any moment leaves either the previous complete version
or the new complete version, never a torn file.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import IO, Any

import pandas as pd
import torch


def _atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates 0600; results get the mode of any new file (shared folders,
        # containers with another uid read them).
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def current_umask() -> int:
    """The process umask, read without changing it where Linux shows it; elsewhere set and
    restored at once (os.umask is the only portable way to read it)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable; not possible on every platform, harmless to skip.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_bytes(path: Path, data: bytes) -> None:
    _atomic_write(path, lambda f: f.write(data))


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode())


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_csv(path: Path, frame: pd.DataFrame) -> None:
    write_text(path, frame.to_csv(index=False))


def write_parquet(path: Path, frame: pd.DataFrame) -> None:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    write_bytes(path, buffer.getvalue())


def save_torch(path: Path, obj: Any) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_bytes(path, buffer.getvalue())


# Flower node ids are unsigned 64-bit: as numbers they would round through float64. Node
# names (fl.client-data=local) are text even when they look like numbers ("007").
TEXT_COLUMNS = {"node_id": str, "node_name": str}


def read_csv(path: Path) -> pd.DataFrame:
    if not Path(path).exists():
        return pd.DataFrame()
    return pd.read_csv(path, dtype=TEXT_COLUMNS)


def rows_to_frame(rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame(list(rows))


def upsert_rows(path: Path, rows: Iterable[Mapping[str, Any]], keys: list[str]) -> pd.DataFrame:
    """Add rows to the CSV at `path`, replacing any earlier rows with the same key values.

    Used for per-round tables: a resumed run that repeats a round overwrites that round's
    rows instead of duplicating them.
    """
    new = rows_to_frame(rows)
    old = read_csv(path)
    if not old.empty and not new.empty:
        merged_keys = new[keys].apply(tuple, axis=1)
        old = old[~old[keys].apply(tuple, axis=1).isin(set(merged_keys))]
    frame = pd.concat([old, new], ignore_index=True) if not old.empty else new
    if keys and not frame.empty:
        frame = frame.sort_values(keys, kind="stable").reset_index(drop=True)
    write_csv(path, frame)
    return frame
