"""One name for one store (issue 19, item 1): ``resolve_store_uri`` is what every entry point uses."""

from __future__ import annotations

import pytest

from mend.storage import InvalidStoreURIError, resolve_store_uri


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    monkeypatch.delenv("MEND_STORE", raising=False)
    monkeypatch.delenv("MEND_STORAGE_URI", raising=False)


def test_explicit_then_mend_store_then_the_default(monkeypatch):
    assert resolve_store_uri() == "artifacts"
    monkeypatch.setenv("MEND_STORE", "s3://team/prod")
    assert resolve_store_uri() == "s3://team/prod"
    assert resolve_store_uri(None) == "s3://team/prod"
    assert resolve_store_uri("/data/store") == "/data/store"


def test_the_former_name_still_works_with_a_warning(monkeypatch):
    monkeypatch.setenv("MEND_STORAGE_URI", "s3://team/prod")
    with pytest.warns(DeprecationWarning, match="MEND_STORE"):
        assert resolve_store_uri() == "s3://team/prod"
    monkeypatch.setenv("MEND_STORE", "s3://team/prod")
    assert resolve_store_uri() == "s3://team/prod"  # both, agreeing: fine


def test_two_names_for_two_stores_are_refused(monkeypatch):
    monkeypatch.setenv("MEND_STORE", "s3://team/prod")
    monkeypatch.setenv("MEND_STORAGE_URI", "artifacts")
    with pytest.raises(InvalidStoreURIError, match="name different stores"):
        resolve_store_uri()


def test_an_unfilled_deployment_placeholder_is_refused(monkeypatch):
    monkeypatch.setenv("MEND_STORE", "{{ $MEND_STORE }}")
    with pytest.raises(InvalidStoreURIError, match="export MEND_STORE before `prefect deploy`"):
        resolve_store_uri()
