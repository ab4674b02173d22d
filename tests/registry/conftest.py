"""Registry tests: the same session-wide Prefect API and tiny-model fixtures as tests/flows."""

from tests.flows.fixtures import prefect_server, tiny_data, tiny_model_dir  # noqa: F401
