"""One writer per checkpoint directory: a lease that rank 0 of a run holds while it trains.

- Local directory: ``<dir>/LEASE``, locked with ``flock`` for the life of the process; the kernel
  drops the lock when the process dies (``kill -9`` included), so a relaunch takes it at once.
  The file's content names the holder (host, pid, job, start time).
- Object store: a ``LEASE`` object created with a conditional PUT (``If-None-Match: *``), so of
  two writers exactly one creates it. It carries an expiry that a heartbeat thread pushes forward
  every ``ttl / 3`` seconds; a lease whose expiry has passed (its holder died) is taken over, and so
  is one written by an earlier attempt of the same scheduler job (``SLURM_JOB_ID``,
  ``TORCHELASTIC_RUN_ID``), which is a restart of this run, not a second writer.

A second writer gets :class:`LeaseHeldError` naming the holder. Acquiring the lease is also the
check that the checkpoint directory is writable, before any training.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import threading
import time
import uuid
from typing import Any

from lamamba import storage

LEASE_FILE = "LEASE"


class LeaseHeldError(RuntimeError):
    """Another process holds the checkpoint directory's lease."""


def _job_id() -> str:
    for key in ("SLURM_JOB_ID", "TORCHELASTIC_RUN_ID", "LAMAMBA_JOB_ID"):
        if os.environ.get(key):
            return f"{key}={os.environ[key]}"
    return ""


def _describe(holder: dict[str, Any]) -> str:
    job = f", {holder['job']}" if holder.get("job") else ""
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(holder.get("started", 0)))
    return f"pid {holder.get('pid')} on {holder.get('host')}{job}, since {started} UTC"


class Lease:
    """The writer's lease on checkpoint directory ``url``: :meth:`acquire`, then :meth:`check`
    before each commit, :meth:`release` at the end."""

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None, ttl_s: float = 120.0,
                 log=print):
        self.url = url
        self.path = storage.join(url, LEASE_FILE)
        self.options = storage_options or {}
        self.ttl_s = ttl_s
        self.log = log
        self.holder = {"id": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid(),
                       "job": _job_id(), "started": time.time()}
        self._fd: int | None = None
        self._lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- local: flock ----------------------------------------------------------------------------
    def _acquire_local(self) -> None:
        try:
            storage.makedirs(self.url)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise PermissionError(f"checkpoint directory {self.url} is not writable: {err.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
            except json.JSONDecodeError:
                holder = {}
            os.close(fd)
            raise LeaseHeldError(f"another run is writing checkpoints to {self.url}: {_describe(holder)} "
                                 f"holds {self.path}; stop it or use another run_dir / checkpoint.dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(self.holder).encode(), 0)
        self._fd = fd

    # ---- object store: conditional create + heartbeat ---------------------------------------------
    def _record(self) -> bytes:
        return json.dumps({**self.holder, "expires": time.time() + self.ttl_s}).encode()

    def _read_remote(self) -> dict[str, Any] | None:
        try:
            return json.loads(storage.read_bytes(self.path, self.options))
        except FileNotFoundError:
            return None
        except json.JSONDecodeError:
            return {}

    def _acquire_remote(self) -> None:
        fs, path = storage.filesystem(self.path, self.options)
        for _ in range(3):  # a lease that vanishes or expires between our reads: try again
            try:
                fs.pipe_file(path, self._record(), mode="create")
                break
            except FileExistsError:
                pass
            except OSError as err:
                raise PermissionError(f"checkpoint directory {self.url} is not writable: {err}") from None
            holder = self._read_remote()
            if holder is None:
                continue
            mine = self.holder["job"] and holder.get("job") == self.holder["job"]
            if not mine and holder.get("expires", 0) > time.time():
                raise LeaseHeldError(
                    f"another run is writing checkpoints to {self.url}: {_describe(holder)} holds {self.path} "
                    f"(expires in {holder['expires'] - time.time():.0f} s unless renewed); stop it or use "
                    "another run_dir / checkpoint.dir")
            why = "an earlier attempt of this job" if mine else "an expired lease"
            self.log(f"taking over {self.path} from {why}: {_describe(holder)}")
            fs.rm(path)
        else:
            raise LeaseHeldError(f"could not take the lease {self.path}: other writers keep replacing it")
        self._thread = threading.Thread(target=self._heartbeat, name="lamamba-lease", daemon=True)
        self._thread.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                holder = self._read_remote()
                if holder is not None and holder.get("id") != self.holder["id"]:
                    self._lost = f"{self.path} was taken over by {_describe(holder)}"
                    return
                storage.write_bytes(self.path, self._record(), self.options)
            except Exception as err:  # an outage: the next beat tries again; check() reports expiry
                self.log(f"could not renew {self.path}: {err}")

    # ---- API --------------------------------------------------------------------------------------
    def acquire(self) -> None:
        """Take the lease or raise :class:`LeaseHeldError` (another writer) / PermissionError."""
        if storage.is_local(self.url):
            self._acquire_local()
        else:
            self._acquire_remote()

    def check(self) -> None:
        """Raise :class:`LeaseHeldError` if the lease was taken over (this process stalled past its
        expiry and another writer started)."""
        if self._lost:
            raise LeaseHeldError(f"lost the checkpoint lease: {self._lost}; stopping without writing")

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=5)
            self._thread = None
            try:
                if not self._lost and (self._read_remote() or {}).get("id") == self.holder["id"]:
                    storage.remove(self.path, storage_options=self.options)
            except Exception as err:  # left to expire
                self.log(f"could not remove {self.path} ({err}); it expires in {self.ttl_s:.0f} s")
