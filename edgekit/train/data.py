"""Feed splits to torch models: images through the shared preprocessing, text through the model's tokenizer."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from edgekit.data.images import preprocess_image
from edgekit.data.splits import Split
from edgekit.tasks import task_spec

_IMAGE_CACHE_LIMIT_BYTES = 2 << 30


class ImageSplitDataset(Dataset):
    """Preprocesses each image once and keeps it when the whole split fits in 2 GiB."""

    def __init__(self, split: Split, preprocessing: dict[str, Any]):
        self.split = split
        self.size = int(preprocessing["image_size"])
        self.mean, self.std = preprocessing["mean"], preprocessing["std"]
        self.cache: dict[int, np.ndarray] | None = (
            {} if len(split) * 3 * self.size * self.size * 4 <= _IMAGE_CACHE_LIMIT_BYTES else None
        )

    @classmethod
    def of(cls, handle, split: Split) -> ImageSplitDataset:
        return cls(split, handle.preprocessing)

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int):
        array = self.cache.get(index) if self.cache is not None else None
        if array is None:
            array = preprocess_image(self.split.items[index], self.size, self.mean, self.std)
            if self.cache is not None:
                self.cache[index] = array
        return index, {"pixel_values": torch.from_numpy(array)}, int(self.split.labels[index])


class TextSplitDataset(Dataset):
    """Tokenizes the whole split once; batches are padded to their longest example."""

    def __init__(self, split: Split, tokenizer, max_length: int, input_names: list[str]):
        self.split = split
        encoded = tokenizer(list(split.items), truncation=True, max_length=max_length)
        self.features = {name: encoded[name] for name in input_names if name in encoded}
        if "token_type_ids" in input_names and "token_type_ids" not in self.features:
            self.features["token_type_ids"] = [[0] * len(ids) for ids in encoded["input_ids"]]
        self.pad_id = tokenizer.pad_token_id or 0

    @classmethod
    def of(cls, handle, split: Split) -> TextSplitDataset:
        return cls(split, handle.tokenizer, handle.preprocessing["max_length"], handle.input_names)

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int):
        return index, {k: v[index] for k, v in self.features.items()}, int(self.split.labels[index])

    def collate(self, batch):
        indices = torch.tensor([b[0] for b in batch], dtype=torch.long)
        labels = torch.tensor([b[2] for b in batch], dtype=torch.long)
        longest = max(len(b[1]["input_ids"]) for b in batch)
        inputs = {}
        for name in batch[0][1]:
            pad = self.pad_id if name == "input_ids" else 0
            inputs[name] = torch.tensor(
                [b[1][name] + [pad] * (longest - len(b[1][name])) for b in batch], dtype=torch.long
            )
        return indices, inputs, labels


def _image_collate(batch):
    indices = torch.tensor([b[0] for b in batch], dtype=torch.long)
    labels = torch.tensor([b[2] for b in batch], dtype=torch.long)
    pixels = torch.stack([b[1]["pixel_values"] for b in batch])
    return indices, {"pixel_values": pixels}, labels


def make_dataset(handle, split: Split) -> Dataset:
    """The task's dataset of ``split`` for ``handle``'s model (its spec's ``dataset`` job)."""
    return task_spec(handle.task).job("dataset")(handle, split)


def make_loader(
    dataset: Dataset, batch_size: int, shuffle: bool, seed: int = 0, batches: list[list[int]] | None = None
) -> DataLoader:
    """Batches in order, shuffled by ``seed``, or exactly the index lists ``batches``."""
    collate = getattr(dataset, "collate", _image_collate)
    if batches is not None:
        # its own generator: creating the iterator must not draw from the global RNG (dropout's), or a
        # run resumed mid-epoch would see other dropout masks than one never stopped
        return DataLoader(
            dataset,
            batch_sampler=batches,
            collate_fn=collate,
            num_workers=0,
            generator=torch.Generator().manual_seed(seed),
        )
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, collate_fn=collate, generator=generator, num_workers=0
    )
