"""Task data: local files, ImageFolder folders, scikit-learn digits, Hugging Face datasets.

The readers here and the image preprocessing are torch-free, so that evaluating an
exported bundle on a device uses exactly the code that fed the model in training.
"""

from edgekit.data.splits import Split, TaskData, load_task_data

__all__ = ["Split", "TaskData", "load_task_data"]
