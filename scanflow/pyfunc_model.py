"""The code MLflow stores with every Scanflow pyfunc and runs to load it (models from code, no pickle)."""

from mlflow.models import set_model

from scanflow.serving import ScanflowPyfunc

set_model(ScanflowPyfunc())
