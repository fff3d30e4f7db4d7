"""Spec API: pydantic models for every kind, the source of the JSON Schemas in schemas/."""

from controller.api.arena import Arena
from controller.api.common import API_VERSION, Resource, split_ref
from controller.api.dataset import Dataset
from controller.api.deployment import Deployment
from controller.api.evalsuite import EvalSuite
from controller.api.experiment import Experiment
from controller.api.model import Model
from controller.api.pipeline import Pipeline

KINDS: dict[str, type[Resource]] = {
    cls.KIND: cls for cls in (Model, Dataset, EvalSuite, Experiment, Arena, Deployment, Pipeline)
}
FOLDER_KIND: dict[str, str] = {cls.FOLDER: kind for kind, cls in KINDS.items()}

__all__ = [
    "API_VERSION",
    "FOLDER_KIND",
    "KINDS",
    "Arena",
    "Dataset",
    "Deployment",
    "EvalSuite",
    "Experiment",
    "Model",
    "Pipeline",
    "Resource",
    "split_ref",
]
