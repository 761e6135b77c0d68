"""A hub for the tests: the release `ws-server` binary (WS_SERVER_BIN, or the workspace's
target/release/ws-server) on a free loopback port, restartable on the same port."""

import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
BINARY = os.environ.get("WS_SERVER_BIN", str(ROOT / "target" / "release" / "ws-server"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Hub:
    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"ws://127.0.0.1:{self.port}"
        self.process = None
        self.start()

    def start(self) -> None:
        env = dict(os.environ, WS_HOST="127.0.0.1", WS_PORT=str(self.port), RUST_LOG="error")
        self.process = subprocess.Popen([BINARY], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("the hub did not start within 10 s")

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None


@pytest.fixture
def hub():
    running = Hub()
    yield running
    running.stop()
