"""Load a model by name or from a stage folder: torchvision names, local Hugging Face folders, hub ids
(remote code never executed), and edgekit's own saved models (safetensors; structurally pruned ones
resized to their saved shapes first)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from edgekit.artifacts import is_stage
from edgekit.data.images import IMAGENET_MEAN, IMAGENET_STD
from edgekit.errors import EdgekitError
from edgekit.models.handle import MODEL_INFO, MODEL_SUBDIR, ModelHandle, is_torchvision_name
from edgekit.tasks import task_spec


def load_model(
    spec: str,
    *,
    task: str,
    label_names: list[str],
    pretrained: bool = False,
    image_size: int | None = None,
    max_length: int = 128,
    max_target_length: int = 128,
) -> ModelHandle:
    """Load ``spec`` for ``task`` with a head over ``label_names``.

    ``spec`` is an edgekit stage folder, a torchvision model name, a local Hugging Face
    folder or a Hugging Face hub id. Remote code is never executed.
    """
    path = Path(spec)
    if path.is_dir() and is_stage(path):
        return load_saved(path, label_names=label_names)
    if path.is_dir() and (path / MODEL_INFO).is_file():
        return load_saved(path.parent, label_names=label_names, folder=path)
    images = task_spec(task).modality == "image"
    if images and is_torchvision_name(spec):
        from edgekit.models.vision import build_torchvision

        module = build_torchvision(spec, len(label_names), pretrained)
        size = image_size or 224
        return ModelHandle(
            module,
            "torchvision",
            spec,
            task,
            list(label_names),
            {"image_size": size, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
            source=spec,
            pretrained=pretrained,
        )
    if images and not path.exists() and "/" not in spec:
        raise EdgekitError(
            f"unknown model {spec!r}: not a torchvision model, a folder or a Hugging Face id (owner/name); "
            "see torchvision.models.list_models() for names"
        )
    from edgekit.models.hf import load_hf

    return load_hf(
        spec,
        task=task,
        label_names=label_names,
        image_size=image_size,
        max_length=max_length,
        max_target_length=max_target_length,
    )


def load_saved(stage_dir: Path, *, label_names: list[str] | None = None, folder: Path | None = None) -> ModelHandle:
    folder = folder or Path(stage_dir) / MODEL_SUBDIR
    info_path = folder / MODEL_INFO
    if not info_path.is_file():
        raise EdgekitError(
            f"{stage_dir} holds no model ({MODEL_SUBDIR}/{MODEL_INFO} missing); pass a distill/finetune output folder"
        )
    from edgekit.artifacts import read_json

    info = read_json(info_path, "save the model again (re-run the stage that wrote it)")
    _check_info(info, info_path)
    if label_names is not None and list(label_names) != list(info["label_names"]):
        raise EdgekitError(
            f"model in {stage_dir} was trained on labels {info['label_names']}, but the data has {list(label_names)}; "
            "use the same label set"
        )
    if info["family"] == "torchvision":
        from edgekit.models.vision import build_torchvision

        module = build_torchvision(info["arch"], len(info["label_names"]), pretrained=False)
        try:
            _load_weights(module, folder, info, strict=True)
        except Exception as exc:
            from edgekit.models.hf import _weights_error

            raise _weights_error(str(folder), exc) from None
        handle = ModelHandle(
            module,
            "torchvision",
            info["arch"],
            info["task"],
            info["label_names"],
            info["preprocessing"],
            source=str(stage_dir),
            pretrained=True,
        )
        if info.get("structure"):
            handle.extra["structure"] = info["structure"]
        return handle
    from edgekit.models.hf import load_hf

    handle = load_hf(
        str(folder),
        task=info["task"],
        label_names=info["label_names"],
        image_size=info["preprocessing"].get("image_size"),
        max_length=info["preprocessing"].get("max_length", 128),
        max_target_length=info["preprocessing"].get("max_target_length", 128),
    )
    handle.source = str(stage_dir)
    if info.get("structure"):  # structurally pruned: from_pretrained re-initialised the shrunk layers
        try:
            _load_weights(handle.module, folder, info, strict=False)
        except Exception as exc:  # noqa: BLE001 - truncated or foreign weights
            from edgekit.models.hf import _weights_error

            raise _weights_error(str(folder), exc) from None
        handle.extra["structure"] = info["structure"]
    return handle


def _check_info(info, path: Path) -> None:
    """The model description a stage wrote: the right keys with the right types, else one clear line."""
    from edgekit.artifacts import check_fields

    check_fields(info, {"family": str, "arch": str, "task": str, "label_names": list, "preprocessing": dict}, path)
    if not all(isinstance(n, str) for n in info["label_names"]):
        raise EdgekitError(f"{path}: label_names must be a list of names; re-run the stage that wrote it")


def _load_weights(module: torch.nn.Module, folder: Path, info: dict[str, Any], strict: bool) -> None:
    """Load ``folder/model.safetensors`` into ``module``, first resizing its layers to the saved
    shapes when the model was structurally pruned."""
    from safetensors.torch import load_file

    state = load_file(str(folder / "model.safetensors"))
    if info.get("structure"):  # layers are smaller than the architecture's
        from edgekit.models.structure import fit_to_state_dict

        fit_to_state_dict(module, state, info["structure"].get("heads"))
    module.load_state_dict(state, strict=strict)
