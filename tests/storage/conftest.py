"""Fixtures for the storage tests: every behaviour test runs on each backend."""

from __future__ import annotations

from pathlib import Path

import pytest

from mend.storage import ArtifactStore
from tests.storage.backends import (
    Backend,
    local_backend,
    obstore_local_backend,
    obstore_s3_backend,
    s3_backend,
)

# The S3 fixtures. Redundant (but harmless: the server is a process-wide
# singleton) once tests/conftest.py registers ``tests.support.fixtures`` itself.
from tests.support.fixtures import flaky_s3_proxy, moto_s3, s3_bucket  # noqa: F401
from tests.support.s3 import MotoS3


@pytest.fixture(params=["local", "s3", "obstore-local", "obstore-s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "local":
        return local_backend(tmp_path / "store")
    if request.param.startswith("obstore"):
        # As it would be if adopted: open_store(uri) reopens these stores on obstore too.
        request.getfixturevalue("monkeypatch").setenv("MEND_STORE_TRANSPORT", "obstore")
    if request.param == "obstore-local":
        return obstore_local_backend(tmp_path / "store")
    moto: MotoS3 = request.getfixturevalue("moto_s3")
    make = obstore_s3_backend if request.param == "obstore-s3" else s3_backend
    return make(moto, request.getfixturevalue("s3_bucket"))


@pytest.fixture
def store(backend: Backend) -> ArtifactStore:
    return backend.store
