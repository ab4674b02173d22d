"""An in-process moto S3 server for tests and benchmarks, bound to 127.0.0.1 on a free port
(or, for a benchmark of concurrent requests, one in a process of its own).

Needs moto (the ``dev`` extra). The server is shared by the whole process
(:func:`shared_moto_s3`); tests isolate themselves with a fresh bucket each
(:meth:`MotoS3.create_bucket`).
Point boto3 at it with the variables from :meth:`MotoS3.env` -- the store code
under test then finds the endpoint exactly as it would in production
(``AWS_ENDPOINT_URL_S3``).

Caveat: moto keeps its state in process-global backends. A test that enters
``moto.mock_aws()`` in the same process resets those backends (wiping this
server's buckets) and intercepts all boto3 calls while active; do not mix the two
in one test, and create buckets per test rather than relying on leftovers.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import logging
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import EndpointConnectionError
from moto.server import ThreadedMotoServer

REGION = "us-east-1"
ACCESS_KEY = "testing"
SECRET_KEY = "testing"
DEFAULT_BUCKET = "mend-test-artifacts"

# Variables that would make boto3 look elsewhere (a developer's real profile,
# session token, endpoint or config files) are removed or neutralised.
UNSET_ENV = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",
    "AWS_MAX_ATTEMPTS",
    "AWS_RETRY_MODE",
)


@dataclass
class MotoS3:
    """A running moto server and how to reach it."""

    server: ThreadedMotoServer | _ServerProcess
    endpoint_url: str
    region: str = REGION
    bucket: str = DEFAULT_BUCKET
    _stopped: bool = field(default=False, repr=False)
    _client: Any = field(default=None, repr=False)
    _client_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def env(self) -> dict[str, str]:
        """Environment variables that point boto3 (and so the code under test) at this server."""
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
            "AWS_ENDPOINT_URL_S3": self.endpoint_url,
            "AWS_CONFIG_FILE": "/nonexistent/mend-tests/aws-config",
            "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/mend-tests/aws-credentials",
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def client(self, endpoint_url: str | None = None, **config: Any) -> Any:
        """A boto3 S3 client with explicit settings (independent of the environment).

        Tests use it to look at or tamper with objects behind the store's back.
        Without arguments the same (thread-safe) client is returned each time.
        """
        if endpoint_url is None and not config:
            with self._client_lock:
                if self._client is None:
                    self._client = self.client(self.endpoint_url)
                return self._client
        return boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=self.region,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            config=Config(retries={"mode": "standard", "max_attempts": 3}, **config),
        )

    def create_bucket(self, name: str | None = None) -> str:
        """Create (idempotently) and return a bucket; a unique name by default."""
        name = name or f"mend-test-{uuid.uuid4().hex[:16]}"
        client = self.client()
        with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
            client.create_bucket(Bucket=name)
        return name

    def stop(self) -> None:
        if not self._stopped:
            self._stopped = True
            self.server.stop()


def _serialise_object_writes() -> None:
    """Make moto's conditional writes atomic, as they are on S3.

    moto 5.2 handles ``If-None-Match: *`` by looking the key up and then writing
    it; two concurrent requests to the threaded server can both pass the check.
    Real S3 guarantees one winner, and the ``put_if_absent`` race tests depend on
    that, so object PUTs and multipart completions are serialised with one lock.
    Idempotent; does nothing if moto's internals are not where expected.
    """
    from moto.s3.responses import S3Response

    if getattr(S3Response, "_mend_serialised", False):
        return
    lock = threading.RLock()
    for name in ("put_object", "_key_response_post"):
        original = getattr(S3Response, name, None)
        if original is None:
            continue

        def locked(self: Any, *args: Any, __original: Any = original, **kwargs: Any) -> Any:
            with lock:
                return __original(self, *args, **kwargs)

        setattr(S3Response, name, functools.wraps(original)(locked))
    S3Response._mend_serialised = True  # type: ignore[attr-defined]


def start_moto_s3(*, bucket: str = DEFAULT_BUCKET, region: str = REGION) -> MotoS3:
    """Start a new moto server on 127.0.0.1 (free port) with ``bucket`` created."""
    # werkzeug logs every request at INFO to stderr; keep warnings and errors.
    werkzeug_logger = logging.getLogger("werkzeug")
    if werkzeug_logger.level in (logging.NOTSET, logging.INFO, logging.DEBUG):
        werkzeug_logger.setLevel(logging.WARNING)
    _serialise_object_writes()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    moto = MotoS3(server=server, endpoint_url=f"http://{host}:{port}", region=region, bucket=bucket)
    moto.create_bucket(bucket)
    return moto


class _ServerProcess:
    """``moto_server`` run as a process of its own, stopped as a threaded server is."""

    def __init__(self, port: int):
        command = [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def start_moto_s3_process(*, bucket: str = DEFAULT_BUCKET, region: str = REGION, timeout_s: float = 30) -> MotoS3:
    """:func:`start_moto_s3`, with the server in a process of its own: it then does not share
    this interpreter with the client (for measuring how requests overlap). Its conditional
    writes are not made atomic (:func:`_serialise_object_writes` patches this process
    only), so it is no place for a ``put_if_absent`` race."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = _ServerProcess(port)
    moto = MotoS3(server=server, endpoint_url=f"http://127.0.0.1:{port}", region=region, bucket=bucket)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            moto.create_bucket(bucket)
            return moto
        except EndpointConnectionError:
            if time.monotonic() > deadline or server.process.poll() is not None:
                moto.stop()
                raise RuntimeError(f"moto_server did not start on {moto.endpoint_url}") from None
            time.sleep(0.2)


_shared: MotoS3 | None = None
_shared_lock = threading.Lock()


def shared_moto_s3() -> MotoS3:
    """The process-wide server, started on first use and stopped at exit.

    Sharing it means fixtures imported into several conftests (or registered twice)
    still start only one server.
    """
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = start_moto_s3()
            atexit.register(_shared.stop)
        return _shared
