"""Local services for the demo, development and the end-to-end tests.

Label Studio (in its own virtual environment, :mod:`ml_backend.devtools.label_studio`) and the DECOMP backend
(:mod:`ml_backend.devtools.backend_process`) each run as a child process in a process group of their own, so
that stopping one by its PID also stops everything it spawned and a Ctrl-C in the terminal reaches only the
parent, which then shuts the children down in order. This module holds what both share: free ports, the
supervised child process (:class:`ServiceProcess`), the lifecycle of a local service (:class:`LocalService`)
and the error type.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import httpx

LOOPBACK = "127.0.0.1"

# The children run in process groups of their own, so a signal that ends this process without unwinding it
# (closing the terminal sends SIGHUP; kill) would leave them running. On Linux this launcher asks the kernel
# to SIGTERM the child when its parent dies, then becomes the real command. The kernel ties that to the
# thread that started the child: start services from a thread that outlives them, such as the main thread.
_PARENT_DEATH_LAUNCHER = """
import ctypes, os, signal, sys
ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
if os.getppid() != int(sys.argv[1]):
    sys.exit("the parent exited before the service started")
os.execvp(sys.argv[2], sys.argv[2:])
"""


class ServiceError(RuntimeError):
    """A local service could not be installed, provisioned, started or stopped; the message says why and
    what to do about it."""


def free_port(host: str = LOOPBACK, preferred: int | None = None) -> int:
    """``preferred`` when nothing listens there, otherwise a port the operating system reports free now
    (another process may take it before it is used; the services check again when they start)."""
    if preferred is not None:
        with socket.socket() as probe:
            # as the servers do: connections of a stopped server in TIME_WAIT must not block its restart
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, preferred))
                return preferred
            except OSError:
                pass
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def read_tail(path: Path, *, start: int = 0, lines: int = 40) -> str:
    """The last ``lines`` lines of ``path`` written after byte offset ``start`` ('' if there is no file)."""
    try:
        with open(path, "rb") as log:
            log.seek(start)
            text = log.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def local_http_client(**kwargs: Any) -> httpx.Client:
    """An HTTP client for services on this machine: proxy variables in the environment must not reroute
    loopback traffic."""
    return httpx.Client(trust_env=False, **kwargs)


def _status_ok(response: httpx.Response) -> bool:
    return response.status_code == 200


def reports_status_up(response: httpx.Response) -> bool:
    """The health answer of Label Studio and of the ML backend protocol: 200 with ``{"status": "UP"}``."""
    try:
        return response.status_code == 200 and response.json().get("status") == "UP"
    except ValueError:
        return False


class ServiceProcess:
    """One long-running child process: its own process group, output appended to ``log_path``, ready when
    ``health_url`` answers as ``is_ready`` wants, stopped by signalling its group (SIGTERM, then SIGKILL)."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        log_path: Path,
        health_url: str,
        is_ready: Callable[[httpx.Response], bool] = _status_ok,
        health_headers: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = dict(env)
        self.log_path = Path(log_path)
        self.health_url = health_url
        self.is_ready = is_ready
        self.health_headers = dict(health_headers or {})
        self.cwd = cwd
        self._process: subprocess.Popen[bytes] | None = None
        self._log_start = 0

    @property
    def pid(self) -> int | None:
        """The child's PID (also its process-group id) while it runs."""
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float) -> None:
        """Launch the child and wait until it is ready; on any failure (including Ctrl-C) the child is stopped
        and a :class:`ServiceError` carries the tail of its log."""
        if self._process is not None:
            raise ServiceError(f"{self.name} is already running (pid {self._process.pid})")
        if shutil.which(self.argv[0], path=self.env.get("PATH")) is None:
            raise ServiceError(f"could not run {self.name}: {self.argv[0]} is not an executable program")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self._log_start = log.tell()
            try:
                self._process = subprocess.Popen(
                    _ended_with_parent(self.argv),
                    env=self.env,
                    cwd=self.cwd,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            except OSError as error:
                raise ServiceError(f"could not run {self.name} ({self.argv[0]}): {error}") from error
        try:
            self._wait_until_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def log_tail(self, lines: int = 40) -> str:
        """What the child wrote since its last start."""
        return read_tail(self.log_path, start=self._log_start, lines=lines)

    def _failure(self, what: str) -> ServiceError:
        return ServiceError(f"{self.name} {what}. Last lines of {self.log_path}:\n{self.log_tail()}")

    def _wait_until_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with local_http_client(timeout=2.0, headers=self.health_headers) as http:
            while True:
                code = self._process.poll()
                if code is not None:
                    raise self._failure(f"exited with code {code} before it answered on {self.health_url}")
                try:
                    if self.is_ready(http.get(self.health_url)):
                        return
                except httpx.HTTPError:
                    pass  # not listening yet
                if time.monotonic() > deadline:
                    raise self._failure(f"did not become ready on {self.health_url} within {timeout:.0f} s")
                time.sleep(0.25)

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM the whole group, SIGKILL whatever is left after ``grace`` seconds, and check that
        nothing of the group survives. Safe to call twice."""
        if self._process is None:
            return
        group = self._process.pid
        _signal_group(group, signal.SIGTERM)
        try:
            gone = self._wait_group_gone(group, grace)
        except BaseException:  # an impatient second Ctrl-C: no more grace, but nothing left behind either
            _signal_group(group, signal.SIGKILL)
            raise
        if not gone:
            _signal_group(group, signal.SIGKILL)
            if not self._wait_group_gone(group, 5.0):
                survivors = live_group_members(group)
                raise ServiceError(f"{self.name} (process group {group}) survived SIGKILL: pids {survivors}")
        self._process = None

    def _wait_group_gone(self, group: int, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while True:
            self._process.poll()  # reap the leader, or it lingers as a zombie member of the group
            if not live_group_members(group):
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)


Started = TypeVar("Started", bound="LocalService")


class LocalService:
    """Shared lifecycle of the local services on ``127.0.0.1:<port>``: a context manager around one
    :class:`ServiceProcess`, stopped on leaving the ``with`` block (exceptions and Ctrl-C included) and, as a
    safety net, at interpreter exit. ``port=None`` picks a free port on first use and keeps it across
    restarts, so URLs handed out stay valid. Subclasses implement :meth:`start` with :meth:`_claim_port`
    and :meth:`_launch`."""

    def __init__(self, *, port: int | None, stop_grace: float) -> None:
        self.stop_grace = stop_grace
        self._port = port
        self._port_is_fixed = port is not None
        self._service: ServiceProcess | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            self._port = free_port()
        return self._port

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._service.pid if self._service is not None else None

    @property
    def running(self) -> bool:
        return self._service is not None and self._service.running

    def start(self: Started) -> Started:
        raise NotImplementedError

    def _claim_port(self, service_name: str) -> None:
        """Fail early on a fixed port that is taken (a server would fail later, or Label Studio would
        silently move to the next port); move an automatic one."""
        if free_port(preferred=self.port) == self.port:
            return
        if self._port_is_fixed:
            raise ServiceError(
                f"port {self.port} on {LOOPBACK} is in use; choose another port for {service_name}"
            )
        self._port = free_port()

    def _launch(self, service: ServiceProcess, timeout: float) -> None:
        self._service = service
        try:
            service.start(timeout)
        except BaseException:
            self._service = None
            raise
        atexit.register(self.stop)

    def stop(self) -> None:
        """Stop the process group (SIGTERM, then SIGKILL after ``stop_grace`` seconds). Idempotent."""
        if self._service is None:
            return
        atexit.unregister(self.stop)
        try:
            self._service.stop(self.stop_grace)
        finally:
            self._service = None

    def __enter__(self: Started) -> Started:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def _ended_with_parent(argv: list[str]) -> list[str]:
    if sys.platform != "linux":
        return argv
    return [sys.executable, "-c", _PARENT_DEATH_LAUNCHER, str(os.getpid()), *argv]


def _signal_group(group: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signum)


def live_group_members(group: int) -> list[int]:
    """PIDs in process group ``group`` that are not zombies. Zombies are skipped because an orphaned child's
    zombie stays until PID 1 reaps it, which a container's init may never do."""
    proc = Path("/proc")
    if not proc.is_dir():  # no procfs (macOS): the signal probe counts zombies too, which is the best we have
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return []
        return [group]
    members = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # fields after the parenthesised command name: state ppid pgrp ...
        state, _ppid, pgrp = stat.rsplit(")", 1)[1].split()[:3]
        if int(pgrp) == group and state != "Z":
            members.append(int(entry.name))
    return members
