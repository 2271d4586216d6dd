"""The state directory: small files (tokens, quota ledgers) that must survive restarts.

Writes are atomic (temporary file, fsync, rename) so that a kill at any moment leaves either
the old or the new content, never a torn file. Files are 0600, the directory 0700.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from ..model.errors import PollError


class StateDirectory:
    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def ensure(self) -> Path:
        self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.path, 0o700)
        if not getattr(self, "_swept", False):
            # temporary files of writes a crash interrupted; the files they were for are intact
            for leftover in self.path.glob(".*.tmp"):
                try:
                    leftover.unlink()
                except OSError:
                    pass
            self._swept = True
        return self.path

    def file(self, name: str) -> Path:
        return self.path / name

    def read_json(self, name: str) -> Any | None:
        """The stored value, or None if absent or unreadable (treated as no state): a damaged
        file (truncated, not UTF-8, nested past the recursion limit) must not stop the start."""
        try:
            return json.loads(self.file(name).read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):
            return None

    def write_json(self, name: str, value: Any) -> None:
        try:
            write_private_file(self.ensure() / name, json.dumps(value, indent=1, sort_keys=True))
        except OSError as exc:
            # A directory on a read-only filesystem (a container's root, a volume mounted
            # read-only or not writable for the exporter's user) is a setting to correct, not a
            # crash; what needed the file (a cloud call, a token) waits until it can be kept.
            raise PollError("config", f"cannot write {name} in the state directory {self.path}: "
                                      f"{exc.strerror or exc}; state_directory must be a directory the exporter "
                                      "can write (tokens and quota ledgers are kept there)") from None


def write_private_file(path: str | os.PathLike, content: str) -> None:
    """Atomically replace `path` with `content`, readable by the owner only (0600)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass
