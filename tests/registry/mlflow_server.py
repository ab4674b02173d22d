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
def http_process(argv: list[str], workdir: Path, ready_url: str, env: dict[str, str] | None = None,
                 timeout: float = 120, log_name: str = "server.log") -> Iterator[None]:
    """Run ``argv`` (an HTTP server) in ``workdir`` until ``ready_url`` answers 200; stop it after.

    Its output goes to ``workdir/log_name``; the tail is in the error if it dies or never
    gets ready.
    """
    log_path = workdir / log_name
    with log_path.open("w") as log:
        proc = subprocess.Popen(argv, env={**os.environ, **(env or {})}, stdout=log, stderr=subprocess.STDOUT,
                                cwd=workdir)
        try:
            deadline = time.monotonic() + timeout
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"{argv[2:4]} exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
                try:
                    with urllib.request.urlopen(ready_url, timeout=2) as response:
                        if response.status == 200:
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{argv[2:4]} not up after {timeout}s:\n{log_path.read_text()[-3000:]}")
                time.sleep(0.5)
            yield
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


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
    with http_process(argv, workdir, f"{url}/health", env, timeout):
        yield url
