"""A real ``mlflow server`` subprocess on 127.0.0.1 for tests (SQLite backend, proxied artifacts)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def mlflow_server(workdir: Path, artifacts_destination: str, env: dict[str, str] | None = None,
                  timeout: float = 120) -> Iterator[str]:
    """Start ``mlflow server`` and yield its URL; artifacts go to ``artifacts_destination``.

    Clients reach artifacts through the server (``mlflow-artifacts:``), so only the
    server needs credentials for the destination (``env``).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", f"sqlite:///{workdir / 'server.db'}",
            "--artifacts-destination", artifacts_destination,
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    log = (workdir / "server.log").open("w")
    proc = subprocess.Popen(argv, env={**os.environ, **(env or {})}, stdout=log, stderr=subprocess.STDOUT,
                            cwd=workdir)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {proc.returncode}:\n{(workdir / 'server.log').read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"mlflow server not up after {timeout}s:\n{(workdir / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
