"""pytest fixtures for S3-backed tests: a moto server, fresh buckets, a flaky proxy.

Register in the top-level ``tests/conftest.py``::

    pytest_plugins = ["tests.support.fixtures"]

Fixtures:

* ``moto_s3`` (session): the shared :class:`~tests.support.s3.MotoS3` server,
  with the environment pointing boto3 at it (dummy credentials, region,
  ``AWS_ENDPOINT_URL_S3``) for the rest of the session.
* ``s3_bucket`` (function): a fresh, empty bucket name on that server.
* ``flaky_s3_proxy`` (function): a started :class:`~tests.support.flaky_proxy.FlakyProxy`
  in front of the server failing 20% of requests with 500/503 (seed 1234);
  adjust with ``set_rates``/``inject``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .flaky_proxy import FlakyProxy
from .s3 import UNSET_ENV, MotoS3, shared_moto_s3


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[MotoS3]:
    """Shared moto S3 server on 127.0.0.1 with boto3's environment pointed at it."""
    server = shared_moto_s3()
    with pytest.MonkeyPatch.context() as patch:
        for name in UNSET_ENV:
            patch.delenv(name, raising=False)
        for name, value in server.env().items():
            patch.setenv(name, value)
        yield server


@pytest.fixture
def s3_bucket(moto_s3: MotoS3) -> str:
    """A new empty bucket (unique name) on the shared moto server."""
    return moto_s3.create_bucket()


@pytest.fixture
def flaky_s3_proxy(moto_s3: MotoS3) -> Iterator[FlakyProxy]:
    """A fault-injecting proxy in front of the moto server (20% of requests fail)."""
    with FlakyProxy(moto_s3.endpoint_url, failure_rate=0.2, seed=1234) as proxy:
        yield proxy
