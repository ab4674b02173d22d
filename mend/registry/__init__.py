"""The MLflow model registry side of the pipeline (:mod:`mend.registry.mlflow_registry`)."""
