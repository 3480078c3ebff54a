"""Hugging Face classifiers: text (BERT-like encoders) and images (ViT), never with remote code."""

from __future__ import annotations

from pathlib import Path

from edgekit.data.images import IMAGENET_MEAN, IMAGENET_STD
from edgekit.errors import EdgekitError
from edgekit.tasks import task_spec


def _weights_error(spec: str, exc: BaseException) -> EdgekitError:
    """A model folder whose weights cannot be loaded: what is wrong with it, never "turn safety off"."""
    import pickle

    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    if isinstance(exc, pickle.UnpicklingError) or "weights_only" in str(exc):
        return EdgekitError(
            f"model {spec!r} has pickle weights (.bin) that are not plain tensors; edgekit refuses to "
            "unpickle them (that can run code): convert them to model.safetensors in an environment "
            "you trust, then load that folder"
        )
    if type(exc).__name__ == "SafetensorError" or "safetensors" in str(exc).lower() or "deserializ" in str(exc).lower():
        return EdgekitError(
            f"model {spec!r}: its safetensors file is corrupt or truncated ({text}); copy or save it again"
        )
    return EdgekitError(f"cannot load model {spec!r}: {text}")


def _from_pretrained(loader, spec: str, task: str, **kwargs):
    try:
        return loader.from_pretrained(spec, **kwargs)
    except OSError as exc:
        if Path(spec).exists():
            raise _weights_error(spec, exc) from None
        raise EdgekitError(
            f"cannot load model {spec!r} as a Hugging Face id (needs network): {str(exc).splitlines()[0][:200]}"
        ) from None
    except ValueError as exc:
        if "weights_only" in str(exc):
            raise _weights_error(spec, exc) from None
        kind = f"is not an encoder-decoder ({task} needs e.g. T5)" if task_spec(task).generates else f"cannot do {task}"
        raise EdgekitError(f"model {spec!r} {kind}: {str(exc).splitlines()[0][:200]}") from None
    except Exception as exc:  # noqa: BLE001 - safetensors, pickle and config errors of a user's folder
        raise _weights_error(spec, exc) from None


def load_hf(
    spec: str,
    *,
    task: str,
    label_names: list[str],
    image_size: int | None,
    max_length: int,
    max_target_length: int = 128,
):
    import transformers

    from edgekit.models.handle import ModelHandle, restore_pruned_vocabulary

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()

    kind = task_spec(task)
    if kind.generates:
        return _load_seq2seq(spec, task, max_length, max_target_length)
    id2label = dict(enumerate(label_names))
    label2id = {name: i for i, name in id2label.items()}
    common = dict(
        num_labels=len(label_names),
        id2label=id2label,
        label2id=label2id,
        trust_remote_code=False,
        ignore_mismatched_sizes=True,
    )
    auto = (
        transformers.AutoModelForImageClassification
        if kind.modality == "image"
        else transformers.AutoModelForSequenceClassification
    )
    model = _from_pretrained(auto, spec, task, **common)
    tokenizer = None
    if kind.modality == "text":
        try:
            tokenizer = restore_pruned_vocabulary(
                transformers.AutoTokenizer.from_pretrained(spec, trust_remote_code=False), spec
            )
        except (OSError, ValueError) as exc:
            raise EdgekitError(f"model {spec!r} has no usable tokenizer: {str(exc).splitlines()[0]}") from None
        if not getattr(tokenizer, "is_fast", False):
            raise EdgekitError(f"model {spec!r} has only a slow tokenizer; edgekit needs a fast one (tokenizer.json)")
        preprocessing = {
            "max_length": int(min(max_length, getattr(model.config, "max_position_embeddings", max_length)))
        }
    else:
        preprocessing = _image_preprocessing(spec, model, image_size)
    return ModelHandle(
        model,
        "hf",
        model.config.model_type,
        task,
        list(label_names),
        preprocessing,
        tokenizer=tokenizer,
        source=spec,
        pretrained=True,
    )


def _image_preprocessing(spec: str, model, image_size: int | None) -> dict:
    mean, std = list(IMAGENET_MEAN), list(IMAGENET_STD)
    # ViT position embeddings fix the input size: the model's own size wins over the recipe's.
    size = getattr(model.config, "image_size", None) or image_size or 224
    try:
        import transformers

        processor = transformers.AutoImageProcessor.from_pretrained(spec)
        mean = list(getattr(processor, "image_mean", mean))
        std = list(getattr(processor, "image_std", std))
    except Exception:  # a config-only folder has no processor: ImageNet statistics are the usual default
        pass
    return {"image_size": int(size), "mean": mean, "std": std}


def _load_seq2seq(spec: str, task: str, max_length: int, max_target_length: int):
    """An encoder-decoder (T5, BART, ...) with its tokenizer."""
    import transformers

    from edgekit.models.handle import ModelHandle, restore_pruned_vocabulary

    model = _from_pretrained(transformers.AutoModelForSeq2SeqLM, spec, task, trust_remote_code=False)
    try:
        tokenizer = restore_pruned_vocabulary(
            transformers.AutoTokenizer.from_pretrained(spec, trust_remote_code=False), spec
        )
    except (OSError, ValueError) as exc:
        raise EdgekitError(f"model {spec!r} has no usable tokenizer: {str(exc).splitlines()[0]}") from None
    preprocessing = {"max_length": int(max_length), "max_target_length": int(max_target_length)}
    return ModelHandle(
        model, "hf", model.config.model_type, task, [], preprocessing, tokenizer=tokenizer, source=spec, pretrained=True
    )
