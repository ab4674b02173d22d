"""Reusable test infrastructure (servers, fault injection, fixtures).

* :mod:`tests.support.s3` -- an in-process moto S3 server on 127.0.0.1.
* :mod:`tests.support.flaky_proxy` -- an HTTP reverse proxy that injects faults.
* :mod:`tests.support.fixtures` -- pytest fixtures built on both; register them
  with ``pytest_plugins = ["tests.support.fixtures"]`` in the top-level conftest.
"""
