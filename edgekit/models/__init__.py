"""Load teachers and students: torchvision names, Hugging Face ids or folders, edgekit stage folders."""

from edgekit.models.handle import ModelHandle, default_lr
from edgekit.models.load import load_model, load_saved

__all__ = ["ModelHandle", "default_lr", "load_model", "load_saved"]
