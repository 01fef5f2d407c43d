"""Shard claims: workers on one run directory split its shards instead of each doing all of them.

A worker claims a shard by holding an exclusive lock (`flock`) on the shard's claim file while it works
on it, and checks once it holds the lock whether the shard was finished meanwhile. The kernel drops the
lock when the process ends, however it ends (kill -9 included), so a dead worker's shard is free again at
once, with no lease to wait out. Claim files are never deleted: deleting one while another worker waits
on it would let a third lock a new file of the same name. Locks hold between processes on one machine
and on filesystems with working locks (local disks, NFSv4).

    runs/<name>/claims/<step>-shard-00000-<key>.lock
"""

from __future__ import annotations

import asyncio
import fcntl
import os
from pathlib import Path

POLL_S = 0.2  # how often a worker waiting for another's shard looks again


class ShardClaim:
    """A held claim; released by `release()` or when its process ends."""

    def __init__(self, path: Path, descriptor: int) -> None:
        self.path = path
        self._descriptor = descriptor

    def release(self) -> None:
        if self._descriptor >= 0:
            os.close(self._descriptor)  # closing the file drops the lock
            self._descriptor = -1

    def __enter__(self) -> ShardClaim:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def claim_path(run_root: Path, output: Path) -> Path:
    """The claim file for a shard output file of the run: `claims/<step>-<shard file>.lock`."""
    return run_root / "claims" / f"{output.parent.name}-{output.stem}.lock"


def try_claim(path: Path) -> ShardClaim | None:
    """The claim on `path` if no other worker holds it, else None (never waits)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        return None
    except BaseException:
        os.close(descriptor)
        raise
    return ShardClaim(path, descriptor)


async def wait_claim(path: Path) -> ShardClaim:
    """The claim on `path`, once the worker holding it lets go (finishes, fails or dies)."""
    while (claim := try_claim(path)) is None:
        await asyncio.sleep(POLL_S)
    return claim
