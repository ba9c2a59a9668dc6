"""Feature stores to test against: SQLite in a temporary folder, and a real
Redis server started for the session (skipped where redis-server is missing);
and the service itself, `likely serve` in a subprocess."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx2
import pytest
import redis

from likely.serve.store import open_store

REDIS_SERVER = shutil.which("redis-server")


class RedisServer:
    """A redis-server subprocess with the durability the store asks for.

    Its data lives in `folder`, so a restarted server replays the same AOF.
    """

    def __init__(self, folder: Path):
        self.folder = folder
        self.port = _free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.folder.mkdir(parents=True, exist_ok=True)
        command = [
            REDIS_SERVER,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.folder),
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
        ]
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + 10
        while True:
            try:
                if client.ping():
                    break
            except redis.exceptions.RedisError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"redis-server on port {self.port} did not start"
                    ) from None
                time.sleep(0.02)
        client.close()
        return self

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final save; only what is on disk survives."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _need_redis() -> None:
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not on PATH (apt-get install redis-server)")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    _need_redis()
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.kill()


@pytest.fixture
def fresh_redis_server(tmp_path):
    """A server of its own, for tests that kill it."""
    _need_redis()
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.kill()


@pytest.fixture(params=["sqlite", "redis"])
def backend(request) -> str:
    return request.param


@pytest.fixture
def store_url(backend, request, tmp_path) -> str:
    if backend == "redis":
        return request.getfixturevalue("redis_server").url
    return f"sqlite:///{tmp_path / 'store.db'}"


@pytest.fixture
def open_test_store(store_url, request):
    """Opens the test's store (as often as asked); every one is closed after.

    Redis keys get a prefix of the test's own, so tests share one server.
    """
    prefix = f"test:{request.node.name}:"
    opened = []

    def open_it(url: str | None = None, **options):
        store = open_store(url or store_url, prefix=prefix, **options)
        opened.append(store)
        return store

    yield open_it
    for store in opened:
        store.close()


@pytest.fixture
def store(open_test_store):
    return open_test_store()


class LiveService:
    """`likely serve` in a subprocess on a free port: real uvicorn, real HTTP,
    and a process a test can SIGKILL. Its output goes to `log`.

    Args:
        run: the ranking run served.
        recall: the recall run served.
        store: the feature store URL.
        token: the bearer token for writes and reloads.
        log: the file the server's stdout and stderr go to.
        port: the port; default a free one (keep it to restart in place).
    """

    def __init__(
        self,
        run: Path,
        recall: Path,
        store: str,
        token: str,
        log: Path,
        port: int | None = None,
    ):
        self.run, self.recall, self.store, self.token = run, recall, store, token
        self.log = log
        self.port = port or _free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def start(self, timeout: float = 60.0) -> LiveService:
        """Start the server and wait until /health answers 200.

        Raises:
            RuntimeError: it exited or was not ready within `timeout` seconds;
                the message holds the end of its log.
        """
        command = [
            sys.executable,
            *("-m", "likely.cli", "serve"),
            *("--run", str(self.run), "--recall", str(self.recall)),
            *("--store", self.store, "--token", self.token),
            *("--host", "127.0.0.1", "--port", str(self.port)),
        ]
        with self.log.open("a") as log:
            log.write(f"\n$ {' '.join(command)}\n")
            log.flush()
            self.process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"},
            )
        deadline = time.monotonic() + timeout
        with httpx2.Client(timeout=2.0) as client:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"likely serve exited with {self.process.returncode}:\n"
                        f"{self.log_tail()}"
                    )
                try:
                    if client.get(f"{self.url}/health").status_code == 200:
                        return self
                except httpx2.TransportError:
                    pass
                if time.monotonic() > deadline:
                    self.kill()
                    raise RuntimeError(
                        f"likely serve was not ready on port {self.port} after "
                        f"{timeout:.0f}s:\n{self.log_tail()}"
                    )
                time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: no shutdown, nothing flushed; only what is on disk survives."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def stop(self) -> None:
        """SIGTERM, and SIGKILL if it has not exited within 10 seconds."""
        if self.process is not None:
            self.process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=10)
            self.kill()

    def log_tail(self, chars: int = 4000) -> str:
        return (
            self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""
        )


def _live_services(folder: Path):
    started: list[LiveService] = []

    def start(run: Path, recall: Path, store: str, token: str, **options):
        log = folder / f"serve-{len(started)}.log"
        service = LiveService(run, recall, store, token, log, **options)
        started.append(service)
        return service.start()

    yield start
    for service in started:
        service.stop()


@pytest.fixture
def live_service(tmp_path):
    """Starts `LiveService`s (as many as asked): `live_service(run, recall,
    store, token, port=None)`. Every one is stopped after the test, whether it
    passed or not."""
    yield from _live_services(tmp_path)


@pytest.fixture(scope="module")
def module_live_service(tmp_path_factory):
    """`live_service` for a server that a module's tests share."""
    yield from _live_services(tmp_path_factory.mktemp("live"))
