"""Feature stores to test against: SQLite in a temporary folder, and a real
Redis server started for the session (skipped where redis-server is missing)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

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
