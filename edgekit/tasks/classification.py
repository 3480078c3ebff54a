"""Classification: one label per image or text; scored by accuracy (and macro F1)."""

from __future__ import annotations

from edgekit.tasks.base import TaskSpec

_JOBS = {
    "load_data": "edgekit.data.labelled:load_labelled",
    "load_eval_split": "edgekit.data.labelled:load_labelled_eval_split",
    "evaluate_model": "edgekit.train.evaluate:evaluate_classifier",
    "default_objective": "edgekit.train.objectives:Objective",
    "kd_objective": "edgekit.distill.logit:logit_objective",
    "graphs": "edgekit.export.graphs:classifier_graphs",
    "bundle_metrics": "edgekit.runtime.scoring:classifier_metrics",
}

IMAGE = TaskSpec(
    "image-classification",
    "image",
    "label an image (ViT, ResNet, MobileNet)",
    jobs={**_JOBS, "dataset": "edgekit.train.data:ImageSplitDataset.of"},
    transformer_fusions=False,
)
TEXT = TaskSpec(
    "text-classification",
    "text",
    "label a text (BERT-like encoders)",
    jobs={**_JOBS, "dataset": "edgekit.train.data:TextSplitDataset.of"},
)
