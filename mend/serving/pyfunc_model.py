"""The model file MLflow stores with every logged editor ("models from code").

MLflow runs this file when the model is loaded, so the logged model holds no pickled
Python object: only this file, the ``mend`` package (``code_paths``) and the editor's
safetensors and JSON.
"""

from mlflow.models import set_model

from mend.serving.pyfunc import MendEditorModel

set_model(MendEditorModel())
