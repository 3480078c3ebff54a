"""What one export works with (:class:`ExportJob`), and the scratch bundle folders candidates live in."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from edgekit import registry
from edgekit.export.presets import Preset
from edgekit.models.handle import ModelHandle
from edgekit.records import Manifest
from edgekit.runtime.bundle import Encoder


def candidate_folder(scratch: Path, name: str, manifest: Manifest) -> Path:
    """A bundle folder in the scratch space the validator can open (manifest without tokenizer)."""
    folder = scratch / name
    folder.mkdir()
    manifest.write(folder)
    return folder


def graph_files(folder: Path, manifest: Manifest) -> list[Path]:
    return [folder / g.file for g in manifest.graphs]


@dataclasses.dataclass
class ExportJob:
    """What one export works with: the model, its graphs, the preset and the parity inputs."""

    handle: ModelHandle
    preset: Preset
    manifest: Manifest
    graphs: list
    encoder: Encoder
    batches: list[dict[str, np.ndarray]]
    reference: list[np.ndarray]
    scratch: Path
    writer: registry.Entry  # the format entry: writer, lossy candidates, suffix, runtime
    notes: dict[str, Any] = dataclasses.field(default_factory=dict)  # format-specific manifest sections

    @property
    def title(self) -> str:
        return self.writer.can("title")

    @property
    def suffix(self) -> str:
        return self.writer.can("suffix")
