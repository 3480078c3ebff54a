"""Hugging Face classifiers: text (BERT-like encoders) and images (ViT), never with remote code."""

from __future__ import annotations

from pathlib import Path

from edgekit.data.images import IMAGENET_MEAN, IMAGENET_STD
from edgekit.errors import EdgekitError


def load_hf(spec: str, *, task: str, label_names: list[str], image_size: int | None, max_length: int,
            max_target_length: int = 128):
    import transformers

    from edgekit.models.handle import ModelHandle

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()

    if task == "text2text":
        return _load_seq2seq(spec, max_length, max_target_length)
    id2label = dict(enumerate(label_names))
    label2id = {name: i for i, name in id2label.items()}
    common = dict(num_labels=len(label_names), id2label=id2label, label2id=label2id,
                  trust_remote_code=False, ignore_mismatched_sizes=True)
    auto = (transformers.AutoModelForImageClassification if task == "image-classification"
            else transformers.AutoModelForSequenceClassification)
    try:
        model = auto.from_pretrained(spec, **common)
    except OSError as exc:
        where = "folder" if Path(spec).exists() else "Hugging Face id (needs network)"
        raise EdgekitError(f"cannot load model {spec!r} as a {where}: {str(exc).splitlines()[0]}") from None
    except ValueError as exc:
        raise EdgekitError(f"model {spec!r} cannot do {task}: {str(exc).splitlines()[0]}") from None
    tokenizer = None
    if task == "text-classification":
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(spec, trust_remote_code=False)
        except (OSError, ValueError) as exc:
            raise EdgekitError(f"model {spec!r} has no usable tokenizer: {str(exc).splitlines()[0]}") from None
        if not getattr(tokenizer, "is_fast", False):
            raise EdgekitError(f"model {spec!r} has only a slow tokenizer; edgekit needs a fast one (tokenizer.json)")
        preprocessing = {"max_length": int(min(max_length, getattr(model.config, "max_position_embeddings", max_length)))}
    else:
        preprocessing = _image_preprocessing(spec, model, image_size)
    return ModelHandle(model, "hf", model.config.model_type, task, list(label_names), preprocessing,
                       tokenizer=tokenizer, source=spec, pretrained=True)


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


def _load_seq2seq(spec: str, max_length: int, max_target_length: int):
    """An encoder-decoder (T5, BART, ...) with its tokenizer."""
    import transformers

    from edgekit.models.handle import ModelHandle

    try:
        model = transformers.AutoModelForSeq2SeqLM.from_pretrained(spec, trust_remote_code=False)
    except OSError as exc:
        where = "folder" if Path(spec).exists() else "Hugging Face id (needs network)"
        raise EdgekitError(f"cannot load model {spec!r} as a {where}: {str(exc).splitlines()[0]}") from None
    except ValueError as exc:
        raise EdgekitError(f"model {spec!r} is not an encoder-decoder (text2text needs e.g. T5): "
                           f"{str(exc).splitlines()[0]}") from None
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(spec, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise EdgekitError(f"model {spec!r} has no usable tokenizer: {str(exc).splitlines()[0]}") from None
    preprocessing = {"max_length": int(max_length), "max_target_length": int(max_target_length)}
    return ModelHandle(model, "hf", model.config.model_type, "text2text", [], preprocessing, tokenizer=tokenizer,
                       source=spec, pretrained=True)
