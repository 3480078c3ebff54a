"""The transfer set: a teacher's outputs on the training examples, computed once and kept on disk.

The key is a hash of the teacher's weights, its architecture and preprocessing, and the examples
(texts, or image files with their size and modification time, or pixel arrays) with their labels.
Change any of them and the key changes, so a stale table is never used. Tables live in
``$EDGEKIT_CACHE_DIR/transfer`` (default ``~/.cache/edgekit/transfer``) as ``.npz`` files and are
shared by every epoch, strategy and student that uses the same teacher on the same data.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit import log
from edgekit.data.splits import Split
from edgekit.processes import is_main, world
from edgekit.tasks import task_spec

FORMAT = "edgekit-transfer-1"


def cache_root() -> Path:
    root = os.environ.get("EDGEKIT_CACHE_DIR")
    return Path(root) if root else Path.home() / ".cache" / "edgekit"


def weights_digest(module) -> str:
    """sha256 of every tensor of the state dict (name, dtype, shape and bytes)."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def split_digest(split: Split, task: str) -> str:
    """A hash of the examples. What an example is comes from the task: for images a string is a file
    path (hashed by path, size and mtime), for text it is the text itself and never touches the disk
    (a 300-byte sentence is no file name: asking the file system about it raised ENAMETOOLONG)."""
    digest = hashlib.sha256()
    images = task_spec(task).modality == "image"
    for item in split.items:
        if isinstance(item, str):
            path = Path(item)
            if images and path.is_file():
                stat = path.stat()
                digest.update(f"file|{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode())
            else:
                digest.update(b"text|" + item.encode("utf-8") + b"\x00")
        elif isinstance(item, np.ndarray):
            digest.update(f"array|{item.dtype}|{item.shape}|".encode() + np.ascontiguousarray(item).tobytes())
        else:  # Pillow image
            digest.update(f"image|{getattr(item, 'mode', '')}|{getattr(item, 'size', '')}|".encode() + item.tobytes())
    digest.update(np.asarray(split.labels, dtype=np.int64).tobytes())
    return digest.hexdigest()


def _arrays_digest(arrays: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}|{array.dtype}|{array.shape}|".encode() + array.tobytes())
    return digest.hexdigest()


def _read_entry(path: Path, key: str, examples: int, features: bool):
    """(logits, features) of a cache entry whose metadata and content checksum match, else None: a
    file of the right shape but other content (garbage, another teacher's) is never used."""
    try:
        with np.load(path, allow_pickle=False) as stored:
            meta = json.loads(str(stored["meta"]))
            arrays = {name: stored[name] for name in stored.files if name != "meta"}
    except Exception:  # noqa: BLE001 - unreadable, truncated, not an npz: recomputed and replaced
        return None
    if (
        meta.get("key") != key
        or meta.get("examples") != examples
        or meta.get("sha256") != _arrays_digest(arrays)
        or "logits" not in arrays
        or len(arrays["logits"]) != examples
        or (features and "features" not in arrays)
    ):
        return None
    if not np.isfinite(arrays["logits"]).all():
        return None
    return arrays["logits"], arrays.get("features") if features else None


@dataclass
class TransferSet:
    logits: np.ndarray
    features: np.ndarray | None
    key: str
    path: Path | None
    hit: bool
    seconds: float


def transfer_set(
    handle,
    split: Split,
    *,
    features: bool = False,
    cache: bool = True,
    batch_size: int = 128,
    desc: str = "teacher logits",
) -> TransferSet:
    """The teacher ``handle``'s logits (and head-input features) on ``split``, from the cache when
    the same teacher already saw the same examples. Under ``accelerate launch`` the main process
    computes them and the others read its cache entry."""
    start = time.perf_counter()
    key = hashlib.sha256(
        json.dumps(
            {
                "format": FORMAT,
                "weights": weights_digest(handle.module),
                "arch": handle.arch,
                "family": handle.family,
                "preprocessing": handle.preprocessing,
                "labels": handle.label_names,
                "data": split_digest(split, handle.task),
                "features": features,
            },
            sort_keys=True,
        ).encode()
    ).hexdigest()[:32]
    path = cache_root() / "transfer" / f"{key}.npz" if cache else None
    if path is not None and world() > 1:  # computed once, by the main process; the others read its file
        if is_main():
            result = _cached_or_computed(handle, split, key, path, features, batch_size, desc, start)
        _barrier()
        if is_main():
            return result
    return _cached_or_computed(handle, split, key, path, features, batch_size, desc, start)


def _barrier() -> None:
    """Wait until every process of the launch gets here."""
    import torch
    from accelerate import PartialState

    PartialState(cpu=not torch.cuda.is_available()).wait_for_everyone()


def _cached_or_computed(handle, split, key, path, features, batch_size, desc, start) -> TransferSet:
    from edgekit.train.evaluate import predict_logits

    if path is not None and path.is_file():
        cached = _read_entry(path, key, len(split), features)
        if cached is not None:
            log.info(f"  {desc}: {len(split)} examples from cache {path}")
            return TransferSet(cached[0], cached[1], key, path, True, time.perf_counter() - start)
        log.warning(
            f"warning: cache entry {path} is damaged or not edgekit's (checksum or shape mismatch); recomputing it"
        )
    if features:
        logits, feats = predict_logits(handle, split, batch_size, desc=desc, features=True)
    else:
        logits, feats = predict_logits(handle, split, batch_size, desc=desc), None
    handle.module.cpu()
    if path is not None and is_main():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{key}-", suffix=".npz", dir=path.parent)
        os.close(fd)
        arrays = {"logits": logits, **({"features": feats} if feats is not None else {})}
        np.savez(
            tmp,
            **arrays,
            meta=np.asarray(json.dumps({"key": key, "examples": len(split), "sha256": _arrays_digest(arrays)})),
        )
        os.replace(tmp, path)
    return TransferSet(logits, feats, key, path, False, time.perf_counter() - start)
