"""Int8 vs fp32 ONNX of one distilled student, measured in one run (this machine is noisy: only the
ratios are meaningful). Usage, after `edgekit run`:

    python benchmarks/int8_vs_fp32.py runs/digits-resnet18-mobilenetv2 [--device cpu] [--json out.json]

Exports the run's student again as fp32 ONNX, evaluates both exported files on the run's evaluation
split, benches both bundles in one `edgekit bench` call, and prints size, p50 latency and accuracy
with the int8/fp32 ratios.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from edgekit import stages
from edgekit.bench.run import bench_bundles, markdown_table
from edgekit.recipe import load_recipe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a folder written by 'edgekit run'")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    recipe = load_recipe(args.run / "recipe.yaml")
    data = stages.load_data(recipe)
    with tempfile.TemporaryDirectory() as scratch:
        fp32 = Path(scratch) / "fp32"
        stages.export(str(args.run / "student"), fp32, preset_name="onnx-fp32", precision="fp32", recipe=recipe)
        int8 = args.run / "export"
        accuracy = {
            name: stages.evaluate_bundle(path, data.eval_split)["accuracy"]
            for name, path in (("fp32", fp32), ("int8", int8))
        }
        document = bench_bundles([fp32, int8], args.device)
    print(markdown_table(document))
    by_name = dict(zip(("fp32", "int8"), document["results"]))
    summary = {
        "device": args.device,
        "accuracy": accuracy,
        "size_mb": {k: r["size_mb"] for k, r in by_name.items()},
        "p50_ms": {k: r["latency_ms"]["p50"] for k, r in by_name.items()},
        "int8_speedup_p50": by_name["fp32"]["latency_ms"]["p50"] / by_name["int8"]["latency_ms"]["p50"],
        "int8_size_ratio": by_name["int8"]["size_mb"] / by_name["fp32"]["size_mb"],
        "int8_accuracy_delta_points": 100 * (accuracy["int8"] - accuracy["fp32"]),
        "valid": document["valid"],
    }
    print(
        f"\nint8 vs fp32 on {args.device}: {summary['int8_speedup_p50']:.2f}x faster (p50), "
        f"{summary['int8_size_ratio']:.2f}x the size, accuracy {accuracy['fp32']:.2%} -> {accuracy['int8']:.2%} "
        f"({summary['int8_accuracy_delta_points']:+.2f} points)"
    )
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "bench": document}, indent=2))


if __name__ == "__main__":
    main()
