"""Serving editors: the MLflow pyfunc model (:mod:`mend.serving.pyfunc`)."""
