"""Flow tests: one temporary Prefect API for the session, tiny models, tmp stores."""

from tests.flows.fixtures import prefect_server, tiny_data, tiny_model_dir  # noqa: F401
