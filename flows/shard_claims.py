"""Shard claims: workers on one run directory split its shards instead of each doing all of them.

A worker claims a shard by holding an exclusive lock (`flock`) on the shard's claim file while it works
on it, and checks once it holds the lock whether the shard was finished meanwhile. The kernel drops the
lock when the process ends, however it ends (kill -9 included), so a dead worker's shard is free again at
once, with no lease to wait out. Claim files are never deleted: deleting one while another worker waits
on it would let a third lock a new file of the same name. Locks hold between processes on one machine
and on filesystems with working locks (local disks, NFSv4). A run kept on object storage (run.dir
s3://...) is claimed on the store instead (`rlaif.run_storage.StoredClaim`): workers on other machines
work in local copies of their own.

    runs/<name>/claims/<step>-shard-00000-<key>.lock
"""

from __future__ import annotations

import asyncio
import fcntl
import os
from pathlib import Path

from rlaif.run_directory import RunDirectory
from rlaif.run_storage import StoredClaim

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


def claim_name(output: Path) -> str:
    """The name of the claim on a shard output file of the run: `<step>-<shard file>`."""
    return f"{output.parent.name}-{output.stem}"


def try_run_claim(run: RunDirectory, name: str) -> ShardClaim | StoredClaim | None:
    """The claim `name` on the run if no other worker holds it, else None: a lock file `claims/<name>.lock`, or
    for a stored run an object on the store."""
    if run.storage is not None:
        return run.storage.try_claim(name)
    return try_claim(run.root / "claims" / f"{name}.lock")


async def wait_run_claim(run: RunDirectory, name: str) -> ShardClaim | StoredClaim:
    """The claim `name` on the run, once the worker holding it lets go (finishes, fails or dies)."""
    while (claim := await asyncio.to_thread(try_run_claim, run, name)) is None:
        await asyncio.sleep(POLL_S)
    return claim


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
