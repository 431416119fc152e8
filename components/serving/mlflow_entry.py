"""MLflow models-from-code entry point of the logged categorizer (see `mlflow_model`).

MLflow copies this file into the logged model and runs it at load time instead of unpickling an object.
"""
import mlflow

from components.serving.mlflow_model import CategorizerModel

mlflow.models.set_model(CategorizerModel())
