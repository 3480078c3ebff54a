"""What a task is: the facts and the jobs that differ between tasks, looked up once where the task
is chosen (``task_spec(name)``), so no other module compares task names.

A spec is torch-free. Its facts are plain fields; its jobs are dotted ``module:function`` strings
imported on first use (as registry entries are), so the runtime can read a spec without importing
training code, and training code can read one without importing the runtime.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

# The jobs a task provides, with their signatures (docs/architecture.md, "How to add a task").
JOBS = {
    "load_data": "(cfg: DataConfig, seed: int) -> TaskData  # from files or a dataset",
    "load_eval_split": "(cfg: DataConfig, label_names, split: str) -> Split  # one split of a trained model's task",
    "dataset": "(handle, split) -> torch Dataset  # rows (index, inputs, label) for the training loop",
    "evaluate_model": "(handle, split, batch_size, desc) -> metrics  # PyTorch model",
    "default_objective": "() -> Objective  # what plain fine-tuning minimises",
    "kd_objective": "(cfg: DistillConfig, teachers, student, data) -> Objective  # distillation",
    "graphs": "(handle) -> list[Graph]  # the graphs an export writes",
    "bundle_metrics": "(bundle, split) -> metrics  # the exported file, torch-free",
}


@dataclass(frozen=True)
class TaskSpec:
    name: str
    modality: str  # "image" or "text": what the inputs are
    summary: str = ""
    generates: bool = False  # outputs text (an encoder-decoder), not one label
    score_key: str = "accuracy"  # the headline metric that picks epochs, cells and reports
    headline_keys: tuple[str, ...] = ("accuracy", "macro_f1")
    min_labels: int = 2  # classes the training data must have (0: no label set)
    times_model: bool = True  # batch-1 latency of the PyTorch model is meaningful
    transformer_fusions: bool = True  # onnxruntime's attention/LayerNorm fusions apply to its graphs
    static_int8: bool = True  # static (calibrated) int8 of its graphs is supported
    # distillation matches one cached logit vector per example: registered logit losses, unlabeled
    # transfer data and learned teacher weights apply
    logit_kd: bool = True
    parity_examples: int = 256  # real examples the export's parity gate runs
    jobs: Mapping[str, str] = field(default_factory=dict)

    def job(self, name: str) -> Callable[..., Any]:
        """The function doing ``name`` for this task (imported now)."""
        if name not in self.jobs:
            raise KeyError(f"task {self.name} has no {name!r} job")
        from edgekit.registry import resolve

        return resolve(self.jobs[name])

    def score(self, metrics: Mapping[str, Any]) -> float:
        return float(metrics[self.score_key])

    def headline(self, metrics: Mapping[str, Any]) -> dict[str, Any]:
        return {k: metrics[k] for k in self.headline_keys if k in metrics}

    @property
    def validation_key(self) -> str:
        return f"val_{self.score_key}"

    @property
    def text(self) -> bool:
        return self.modality == "text"
