"""Durable file writes, shared by the agent's spool and the hub's archive."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable (the file's own fsync does not cover its name)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_and_hash(path: Path) -> tuple[str, int]:
    """SHA-256 (hex) and size of a file just written, with its data and size made durable.

    The file is read back from the page cache through one reused buffer (``file_digest``):
    reading it in fresh 1 MB chunks cost as much CPU again as the hash itself.
    """
    with open(path, "rb", buffering=0) as f:
        sha256 = hashlib.file_digest(f, "sha256").hexdigest()
        os.fdatasync(f.fileno())
        return sha256, os.fstat(f.fileno()).st_size
