"""Run directories on object storage or any other fsspec filesystem (`run.dir: s3://bucket/prefix`, `gs://`,
`az://`, `memory://`): the run is worked on in a local copy (`run.local_copy`), and the store holds it.

    pull           at the start of a flow or command: every stored file missing from the local copy, or
                   changed on the store since this copy last saw it (its ETag), is downloaded
    put_once       a shard file, as soon as it is written: uploaded with a conditional create (S3's
                   If-None-Match: *), so the first upload of a content key is the only one
    push_changed   at the end, however it ends: every local file changed since it was pulled or pushed
                   (routing, manifest, report, the merged dataset, a trained model) is uploaded whole

Why no reader sees half a file: an object store shows an object only once its upload has completed (a
single PUT, or a multipart upload's completion), so a reader finds all of it or nothing. A shard's key
hashes everything its content depends on, so a shard object is written once and never changes: a second
worker that computed the same shard finds the object there (the conditional create refuses it) and keeps
the stored one, equal to its own. The files that change (routing.jsonl, manifest.json, report.json) are
replaced whole. Workers on one run split its shards through claims on the store (`StoredClaim`).

Credentials never come from the config: the filesystem's own chain reads them (for S3: the AWS_*
environment variables, ~/.aws, an instance or pod role; AWS_ENDPOINT_URL for an S3-compatible store).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SYNC_STATE = ".stored.json"  # in the local copy: what it last pulled or pushed, per file
LOCAL_ONLY = ("claims", "datasets-cache")  # folders never stored: lock files; what training derives from the data
LEASE_S = 60.0  # a claim whose holder stopped renewing it for this long is taken over
HOLDER = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def is_stored(location: str) -> bool:
    """Whether a run directory is a filesystem URL (object storage) rather than a local path."""
    return "://" in location and not location.startswith("file://")


def default_local_copy(url: str) -> Path:
    """Where a stored run is worked on when run.local_copy is not set: ~/.cache/rlaif/runs/<hash of the URL>."""
    return Path.home() / ".cache" / "rlaif" / "runs" / hashlib.sha256(url.encode()).hexdigest()[:16]


class StoredClaim:
    """A worker's claim on a piece of a stored run (a shard, routing): an object created only if absent,
    renewed every LEASE_S / 3 while held, deleted when let go. One whose holder stopped renewing it (a dead
    worker) is taken over after LEASE_S; two takers at that moment may both compute the shard, which costs
    its model calls twice and nothing else (its object is written once)."""

    def __init__(self, storage: RunStorage, key: str) -> None:
        self.storage, self.key = storage, key
        self._stop = threading.Event()
        self._renewer = threading.Thread(target=self._renew, name=f"renew {key}", daemon=True)
        self._renewer.start()

    def _renew(self) -> None:
        while not self._stop.wait(LEASE_S / 3):
            with contextlib.suppress(OSError):  # the next renewal tries again
                self.storage.fs.pipe_file(self.key, claim_body())

    def release(self) -> None:
        if not self._stop.is_set():
            self._stop.set()
            with contextlib.suppress(FileNotFoundError):
                self.storage.fs.rm_file(self.key)

    def __enter__(self) -> StoredClaim:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def claim_body() -> bytes:
    return json.dumps({"holder": HOLDER, "expires": time.time() + LEASE_S}).encode()


class RunStorage:
    """A run directory on a filesystem URL, and its local copy."""

    def __init__(self, url: str, local: Path, storage_options: dict[str, Any] | None = None) -> None:
        import fsspec

        self.url, self.local = url.rstrip("/"), local
        self.fs, self.root = fsspec.core.url_to_fs(self.url, **(storage_options or {}))
        self.root = self.root.rstrip("/")
        self._state_file = local / SYNC_STATE
        self._lock = threading.Lock()  # shards finishing together record their uploads one at a time
        self._state: dict[str, dict[str, Any]] = {}
        if self._state_file.is_file():
            self._state = json.loads(self._state_file.read_text(encoding="utf-8"))

    def key(self, path: Path) -> str:
        """The stored object of a file of the local copy."""
        return f"{self.root}/{path.relative_to(self.local).as_posix()}"

    def pull(self) -> int:
        """Download every stored file that the local copy lacks or that changed on the store since this copy
        last saw it (claims and caches excepted); returns how many."""
        self.local.mkdir(parents=True, exist_ok=True)
        self.fs.invalidate_cache(self.root)  # listings cached earlier would miss what other workers wrote since
        try:
            stored = self.fs.find(self.root, detail=True)
        except FileNotFoundError:
            stored = {}
        fetched = 0
        for name, info in stored.items():
            relative = name[len(self.root) + 1 :] if name.startswith(self.root + "/") else None
            if not relative or not _stored_here(relative):
                continue
            path = self.local / relative
            if not path.is_file() or self._state.get(relative, {}).get("etag") != _etag(info):
                self._download(name, path, info)  # new, or changed on the store (a local change is pushed later)
                fetched += 1
        self._save_state()
        return fetched

    def fetch(self, path: Path) -> bool:
        """Download one file of the run if the store has it (a shard another worker finished) and this copy does
        not have it as stored already; whether the store has it."""
        self.fs.invalidate_cache(self.key(path))  # a listing cached earlier would say it is not there
        try:
            info = self.fs.info(self.key(path))
        except FileNotFoundError:
            return False
        seen = self._state.get(path.relative_to(self.local).as_posix(), {})
        if not path.is_file() or seen.get("etag") != _etag(info):
            self._download(self.key(path), path, info)
            self._save_state()
        return True

    def put_once(self, path: Path) -> None:
        """Upload a written-once file (a shard) unless the store has it already (then it holds the same content)."""
        with contextlib.suppress(FileExistsError):
            self.fs.put_file(str(path), self.key(path), mode="create")
        self._record(path)
        self._save_state()

    def put_new(self, paths: list[Path]) -> None:
        """`put_once` each of these files that exists here and was neither pulled nor pushed yet."""
        for path in paths:
            if path.is_file() and path.relative_to(self.local).as_posix() not in self._state:
                self.put_once(path)

    def fetch_missing(self, paths: list[Path]) -> None:
        """`fetch` each of these files that the local copy lacks."""
        for path in paths:
            if not path.is_file():
                self.fetch(path)

    def push_changed(self) -> int:
        """Upload every file of the local copy changed since it was pulled or pushed; returns how many."""
        pushed = 0
        for path in sorted(p for p in self.local.rglob("*") if p.is_file()):
            relative = path.relative_to(self.local).as_posix()
            if not _stored_here(relative) or path.name.endswith(".tmp"):
                continue
            if not self._unchanged_here(path, self._state.get(relative, {})):
                self.fs.put_file(str(path), self.key(path))
                self._record(path)
                pushed += 1
        self._save_state()
        return pushed

    def try_claim(self, name: str) -> StoredClaim | None:
        """The claim `name` (claims/<name> on the store) if no live worker holds it, else None."""
        key = f"{self.root}/claims/{name}"
        try:
            self.fs.pipe_file(key, claim_body(), mode="create")
        except FileExistsError:
            try:
                held = json.loads(self.fs.cat_file(key))
            except FileNotFoundError:
                return None  # let go meanwhile: the next try takes it
            if held.get("expires", 0) > time.time():
                return None
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm_file(key)  # its holder stopped renewing it: taken over
            try:
                self.fs.pipe_file(key, claim_body(), mode="create")
            except FileExistsError:
                return None
        return StoredClaim(self, key)

    def _download(self, name: str, path: Path, info: dict[str, Any]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.{os.getpid()}.download.tmp")
        self.fs.get_file(name, str(partial))
        os.replace(partial, path)  # a reader of the local copy never sees half a file either
        self._record(path, _etag(info))

    def _record(self, path: Path, etag: str | None = None) -> None:
        if etag is None:
            # Asked afresh: a listing cached at the last pull would not hold a file another worker stored since.
            self.fs.invalidate_cache(self.key(path))
            etag = _etag(self.fs.info(self.key(path)))
        stat = path.stat()
        with self._lock:
            self._state[path.relative_to(self.local).as_posix()] = {
                "etag": etag,
                "size": stat.st_size,
                "mtime_ns": stat.st_mtime_ns,
            }

    @staticmethod
    def _unchanged_here(path: Path, seen: dict[str, Any]) -> bool:
        stat = path.stat()
        return seen.get("size") == stat.st_size and seen.get("mtime_ns") == stat.st_mtime_ns

    def _save_state(self) -> None:
        with self._lock:  # shards finishing together write it one after the other
            partial = self._state_file.with_name(f"{SYNC_STATE}.{os.getpid()}.tmp")
            partial.write_text(json.dumps(self._state, sort_keys=True), encoding="utf-8")
            os.replace(partial, self._state_file)


def _stored_here(relative: str) -> bool:
    """Whether a file of the run (its path in the run) belongs on the store."""
    return relative != SYNC_STATE and not any(part in LOCAL_ONLY for part in relative.split("/")[:-1])


def _etag(info: dict[str, Any]) -> str:
    """What identifies a stored object's content: its ETag where the store gives one, else size and time."""
    made = info.get("LastModified") or info.get("mtime") or info.get("created")
    return str(info.get("ETag") or info.get("etag") or (info.get("size"), made))


def local_input(location: str) -> Path:
    """An input the run only reads (prompts, a merged dataset, a model folder) as a local path: itself when it
    is one; for a URL, a local copy of the file or folder, under ~/.cache/rlaif/inputs/ and brought up to date
    with the store (by ETag) each time."""
    if not is_stored(location):
        return Path(location).expanduser()
    import fsspec

    fs, path = fsspec.core.url_to_fs(location)
    fs.invalidate_cache(path)
    if not fs.exists(path):
        raise FileNotFoundError(f"{location}: no such file or folder on the store")
    local = Path.home() / ".cache" / "rlaif" / "inputs" / hashlib.sha256(location.encode()).hexdigest()[:16]
    if fs.isdir(path):
        RunStorage(location, local).pull()
        return local
    folder, name = location.rsplit("/", 1)
    RunStorage(folder, local).fetch(local / name)  # of the file's folder, only the file
    return local / name


@contextlib.contextmanager
def stored_run(url: str | None, local: Path) -> Iterator[RunStorage | None]:
    """A stored run pulled into `local` for the block and its changes pushed back however the block ends; None
    (nothing to do) for a run directory on local disk."""
    if url is None:
        yield None
        return
    storage = RunStorage(url, local)
    storage.pull()
    try:
        yield storage
    finally:
        storage.push_changed()
