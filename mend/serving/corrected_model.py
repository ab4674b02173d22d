"""The model file MLflow stores with every logged corrected model ("models from code")."""

from mlflow.models import set_model

from mend.registry.corrected import CorrectedModel

set_model(CorrectedModel())
