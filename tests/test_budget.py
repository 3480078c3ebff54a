"""Quantization within an accuracy budget (export --max-drop): a classifier with one planted sensitive
weight matrix gets that matrix back at higher precision; a budget no plan may meet fails cleanly."""

from __future__ import annotations

import json

import pytest

from conftest import assert_user_error, cli_in_process, save_tiny_bert, tiny_t5, write_questions
from conftest import write_stage as _stage

pytestmark = pytest.mark.slow
LABELS = ["HUM", "LOC", "NUM"]


def _train(folder, texts, labels):
    """A few epochs of the tiny BERT on the keyword questions (they are separable by their first words)."""
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = BertForSequenceClassification.from_pretrained(folder, num_labels=len(LABELS), ignore_mismatched_sizes=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    torch.manual_seed(0)
    y = torch.tensor(labels)
    model.train()
    for _ in range(40):
        for start in range(0, len(texts), 32):
            batch = tokenizer(texts[start : start + 32], padding=True, return_tensors="pt")
            loss = model(**batch, labels=y[start : start + 32]).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    return model


def _plant(model, scale: float = 1000.0):
    """Every layer's attention output projection made fragile without changing the fp32 function: the
    value projection's channel 0 divided by ``scale``, the output projection's input channel 0 multiplied
    by it (attention mixes positions linearly, so the product is the same). Quantizing that projection
    (int4 blocks or int8 columns that hold the huge weight) rounds its other weights to zero."""
    import torch

    with torch.no_grad():
        for layer in model.bert.encoder.layer:
            layer.attention.self.value.weight[0] /= scale
            layer.attention.self.value.bias[0] /= scale
            layer.attention.output.dense.weight[:, 0] *= scale


@pytest.fixture(scope="module")
def planted(tmp_path_factory, minilm_tokenizer_dir):
    import csv

    from edgekit.models import load_model

    root = tmp_path_factory.mktemp("budget")
    write_questions(root / "train.tsv", 300, 1)
    write_questions(root / "test.tsv", 60, 2)
    rows = list(csv.reader((root / "train.tsv").open(), delimiter="\t"))[1:]
    src = save_tiny_bert(root / "src", minilm_tokenizer_dir, hidden=32, layers=2)
    model = _train(src, [r[1] for r in rows], [LABELS.index(r[0]) for r in rows])
    _plant(model)
    model.save_pretrained(src)
    handle = load_model(str(src), task="text-classification", label_names=LABELS)
    recipe = (
        f"task: text-classification\ndata: {{train: {root}/train.tsv, test: {root}/test.tsv}}\n"
        "teacher: {model: x}\nstudent: {model: x}\n"
    )
    return {"stage": _stage(root / "stage", handle, recipe), "root": root}


# int8 columns holding the planted weight lose their other weights as int4 blocks do: both go to fp32
@pytest.mark.parametrize("flag,fragile_to", [("--int8", "fp32"), ("--int4", "fp32")])
def test_planted_sensitive_weight_goes_back_to_higher_precision(planted, tmp_path, flag, fragile_to):
    import onnx

    plain = tmp_path / "plain"
    proc = cli_in_process("export", planted["stage"], flag, "--out", plain, "--allow-drop")
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "run" / "export"  # a run folder's export stage, as edgekit run lays it out
    proc = cli_in_process("export", planted["stage"], flag, "--max-drop", "2", "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert "budget:" in proc.stdout and "points" in proc.stdout
    budget = json.loads((out / "manifest.json").read_text())["quantization"]["budget"]
    assert budget["fp32_accuracy"] > 0.9  # the planted model is still the trained one in fp32
    first = budget["trials"][0]
    assert first["moves"] == 0 and first["drop_points"] > 2  # the preset's bundle breaks the budget
    assert budget["drop_points"] <= 2 and budget["passed"]
    fragile = {f"/bert/encoder/layer.{i}/attention/output/dense/MatMul" for i in range(2)}
    # (weight, precision) probes, noisiest first; an int4 weight is probed at int4 and int8
    ranked = list(dict.fromkeys(r["node"].removeprefix("/module") for r in budget["sensitivity"]))
    assert len(ranked) == budget["weights"]
    probes = [(r["node"], r["precision"]) for r in budget["sensitivity"]]
    matmuls = {n for n, _ in probes if n.endswith("/MatMul")}
    expected = {"int4", "int8"} if flag == "--int4" else {"int8"}  # Gemms (pooler, head) are int8 either way
    assert all({p for m, p in probes if m == n} == expected for n in matmuls)
    assert set(ranked[:2]) == fragile, ranked[:4]  # the planted weights are the most sensitive
    plan = {n.removeprefix("/module"): p for n, p in budget["plan"].items()}
    # the most sensitive goes back first (the fewest moves that meet the budget are kept, so the second
    # planted weight may stay quantized when the first alone restores the accuracy)
    assert plan[ranked[0]] == fragile_to, {n: plan[n] for n in fragile}
    assert {r["node"].removeprefix("/module") for r in budget["returned"]} <= set(ranked[: budget["returned_count"]])
    assert budget["returned_count"] < budget["weights"] // 2  # the rest stays at the preset's precision
    assert sum(budget["precision_counts"].values()) == budget["weights"]
    assert 0 < budget["float_share"] <= budget["max_float_share"]
    # the shipped graph is the plan: the returned weights are plain MatMuls again
    graph = onnx.load(str(out / "model.onnx")).graph
    float_matmuls = {n.name.removeprefix("/module") for n in graph.node if n.op_type == "MatMul"}
    assert {r["node"].removeprefix("/module") for r in budget["returned"] if r["to"] == "fp32"} <= float_matmuls
    ev = cli_in_process("eval", out, "--data", planted["root"] / "test.tsv", "--json", tmp_path / "m.json")
    assert ev.returncode == 0, ev.stderr
    evp = cli_in_process("eval", plain, "--data", planted["root"] / "test.tsv", "--json", tmp_path / "p.json")
    assert evp.returncode == 0, evp.stderr
    budgeted, broken = (json.loads((tmp_path / f).read_text())["accuracy"] for f in ("m.json", "p.json"))
    assert budgeted > broken + 0.1, (budgeted, broken)
    # the report's rows carry the plan and the byte breakdown; its sections say them
    from edgekit.report.build import _export_rows, budget_lines, bytes_table

    rows = _export_rows("run", "export", tmp_path / "run", None)
    assert rows[0]["budget"]["returned_count"] == budget["returned_count"]
    (line,) = budget_lines(rows)
    assert f"drop {budget['drop_points']:.2f} points (budget 2)" in line and "returned to higher precision" in line
    header, body = bytes_table(rows)
    assert header[1] == "whole (MB)" and float(body[0][1]) > 0 and "embeddings (MB)" in header


def test_a_budget_no_plan_meets_fails_with_the_best_plan_and_writes_nothing(planted, tmp_path, monkeypatch):
    from edgekit import stages
    from edgekit.errors import EdgekitError
    from edgekit.export import budget

    monkeypatch.setattr(budget, "MAX_FLOAT_SHARE", 0.0)  # int8 breaks the planted weights too: no fp32 allowed
    out = tmp_path / "b"
    with pytest.raises(EdgekitError, match="no quantization plan keeps .* within --max-drop 0 points: the best") as err:
        stages.export(str(planted["stage"]), out, preset_name=None, precision="int8", max_drop=0.0)
    assert "no bundle written" in str(err.value) and "\n" not in str(err.value)
    assert not out.exists() and not list(tmp_path.glob(".b.*"))


@pytest.mark.parametrize(
    "args,needles",
    [
        (["--max-drop", "-1"], ["max_drop", "0 to 100"]),
        (["--max-drop", "nan"], ["max_drop", "finite"]),
        (["--max-drop", "1", "--fp32"], ["--max-drop", "not quantized"]),
        (["--max-drop", "1", "--allow-drop"], ["contradict"]),
        (["--max-drop", "1", "--format", "torchscript"], ["ONNX bundles"]),
    ],
)
def test_bad_budgets_fail_in_one_line(planted, tmp_path, args, needles):
    proc = cli_in_process("export", planted["stage"], *args, "--out", tmp_path / "b")
    assert_user_error(proc, *needles)
    assert not (tmp_path / "b").exists()


def test_ctrl_c_during_the_budget_search_leaves_nothing(planted, tmp_path):
    """SIGINT while the budget ranks weights and builds plans (tens of scratch graphs): exit 130, one line,
    no bundle, no temp folder beside it, no scratch graph in the temp directory."""
    import signal

    from test_interrupts import _leftovers, _one_error, _signal_after, _start

    proc = _start(["export", planted["stage"], "--int4", "--max-drop", "0", "--out", tmp_path / "bundle"], tmp_path)
    stderr = _signal_after(proc, signal.SIGINT, "export: budget 0 points", 0)
    assert "interrupted" in _one_error(stderr, 130, proc)
    assert _leftovers(tmp_path, "bundle") == []
    # the private TMPDIR the command ran with: every temp file (edgekit's, onnxruntime's, even the .ses
    # id file onnxruntime writes when imported) went under the command's own folder, removed at exit
    assert list((tmp_path / "tmp").iterdir()) == []


def _plant_cnn(stage, scale: float = 1000.0):
    """ResNet-18's first block made fragile under static int8 without changing the fp32 function: the
    BatchNorm after its first convolution scales channel 0 by ``scale`` (ReLU commutes with it), the
    second convolution's input channel 0 divides by it. The activation between them, quantized per
    tensor, then rounds every other channel to zero."""
    from safetensors.torch import load_file, save_file

    path = stage / "model" / "model.safetensors"
    weights = load_file(str(path))
    weights["layer1.0.bn1.weight"][0] *= scale
    weights["layer1.0.bn1.bias"][0] *= scale
    weights["layer1.0.conv2.weight"][:, 0] /= scale
    save_file(weights, str(path))


def test_static_int8_cnn_budget_returns_the_planted_layers_to_fp32(tmp_path):
    """A CNN's static int8 (calibrated activations) is planned like dynamic int8: the two convolutions
    around a planted activation rank noisiest, go back to fp32, and the shipped graph meets the budget."""
    import onnx

    stage = tmp_path / "cnn"
    digits = ["--dataset", "digits", "--image-size", "32", "--set", "data.limit=600"]
    proc = cli_in_process(
        "finetune", "resnet18", *digits, "--epochs", "3", "--batch-size", "32", "--lr", "1e-3", "--out", stage
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    _plant_cnn(stage)
    out = tmp_path / "bundle"
    proc = cli_in_process("export", stage, "--int8", "--max-drop", "1", "--out", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "budget:" in proc.stdout and "points" in proc.stdout
    quantization = json.loads((out / "manifest.json").read_text())["quantization"]
    budget = quantization["budget"]
    assert quantization["mode"] == "static" and budget["mode"] == "static"
    assert budget["fp32_accuracy"] > 0.8  # trained: the planted model is the same function in fp32
    first = budget["trials"][0]
    assert first["moves"] == 0 and first["drop_points"] > 5  # the preset's static int8 breaks the budget
    assert budget["drop_points"] <= 1 and budget["passed"]
    # every layer with a weight is a planned unit, but the first convolution the preset keeps fp32
    ranked = [r["node"] for r in budget["sensitivity"]]
    assert len(ranked) == budget["weights"] == 20 and quantization["fp32_nodes"][0] not in ranked
    planted = {f"/module/layer1/layer1.0/conv{i}/Conv" for i in (1, 2)}
    assert set(ranked[:2]) == planted, budget["sensitivity"][:4]
    assert budget["sensitivity"][1]["snr_db"] + 10 < budget["sensitivity"][2]["snr_db"]  # far noisier than the rest
    returned = {r["node"] for r in budget["returned"]}
    assert returned and returned <= planted and all(r["to"] == "fp32" for r in budget["returned"])
    assert budget["precision_counts"] == {"int8": 20 - len(returned), "fp32": len(returned)}
    # the shipped graph is the plan: the returned convolutions read a float weight, the others a dequantized one
    graph = onnx.load(str(out / "model.onnx")).graph
    dequantized = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    convs = {n.name: n for n in graph.node if n.op_type == "Conv"}
    assert all(convs[name].input[1] not in dequantized for name in returned)
    assert convs["/module/layer1/layer1.1/conv1/Conv"].input[1] in dequantized
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["parity"]["int8"]["label_agreement"] > 0.95  # parity is still measured and recorded


def t5_stage(root, tokenizer_dir, plant: bool):
    """A tiny T5 stage whose task's references are the fp32 model's own greedy outputs: fp32 scores BLEU
    100 by construction, so every point lost is quantization's. ``plant``: its first encoder and first
    decoder self-attention made fragile as _plant does (value channel 0 divided, the output projection's
    input channel 0 multiplied: the same function)."""
    import random

    import torch
    from transformers import AutoTokenizer

    from edgekit.models import load_model

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = tiny_t5(tokenizer).eval()
    with torch.no_grad():
        for stack in (model.encoder, model.decoder) if plant else ():
            attention = stack.block[0].layer[0].SelfAttention
            attention.v.weight[0] /= 1000.0
            attention.o.weight[:, 0] *= 1000.0
    model.save_pretrained(root / "src")
    tokenizer.save_pretrained(root / "src")
    rng = random.Random(0)
    words = ["paris", "rome", "tokyo", "moon", "river", "radio", "python", "tower", "music", "apple"]
    for name, n in (("train.tsv", 40), ("val.tsv", 64)):
        sources = [" ".join(rng.choice(words) for _ in range(5)) for _ in range(n)]
        batch = tokenizer(sources, padding=True, truncation=True, max_length=32, return_tensors="pt")
        with torch.no_grad():
            ids = model.generate(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], max_new_tokens=8, do_sample=False
            )
        targets = [t.strip() or "x" for t in tokenizer.batch_decode(ids, skip_special_tokens=True)]
        (root / name).write_text("source\ttarget\n" + "".join(f"{s}\t{t}\n" for s, t in zip(sources, targets)))
    handle = load_model(str(root / "src"), task="text2text", label_names=[], max_length=32, max_target_length=8)
    recipe = (
        f"task: text2text\ndata: {{train: {root}/train.tsv, val: {root}/val.tsv, test: {root}/val.tsv, "
        "text_column: source, label_column: target, max_length: 32, max_target_length: 8}\n"
        "teacher: {model: x}\nstudent: {model: x}\n"
    )
    return _stage(root / "stage", handle, recipe)


@pytest.fixture(scope="module")
def planted_t5(tmp_path_factory, minilm_tokenizer_dir):
    return t5_stage(tmp_path_factory.mktemp("budget_t5"), minilm_tokenizer_dir, plant=True)


def test_encoder_decoder_budget_is_bleu_over_every_graph(planted_t5, tmp_path):
    """An encoder-decoder's budget: BLEU points of greedy generations; its weights are planned across its
    graphs (encoder, cross-attention, decoder step), and the planted projections go back to fp32."""
    import onnx

    out = tmp_path / "bundle"
    proc = cli_in_process("export", planted_t5, "--int8", "--max-drop", "5", "--out", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "budget: validation BLEU" in proc.stdout and "points" in proc.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    budget = manifest["quantization"]["budget"]
    assert budget["metric"] == "bleu" and "accuracy" not in budget
    assert budget["fp32_score"] == pytest.approx(1.0)  # the references are the fp32 model's own outputs
    assert budget["trials"][0]["drop_points"] > 20  # the preset's int8 breaks the budget
    assert budget["drop_points"] <= 5 and budget["passed"]
    files = {g["file"] for g in manifest["graphs"]}
    assert len(files) > 1 and all(r["node"].split(":")[0] in files for r in budget["sensitivity"])
    assert {r["node"].split(":")[0] for r in budget["sensitivity"]} == files  # every graph's weights are planned
    top = [r["node"] for r in budget["sensitivity"][:2]]
    assert "encoder.onnx:/encoder/block.0/layer.0/SelfAttention/o/MatMul" in top, budget["sensitivity"][:4]
    decoder = next(f for f in files if f.startswith("decoder"))
    assert any(n.startswith(f"{decoder}:") and "o/MatMul" in n for n in top), budget["sensitivity"][:4]
    assert budget["sensitivity"][1]["snr_db"] + 10 < budget["sensitivity"][2]["snr_db"]
    returned = [r["node"] for r in budget["returned"]]
    assert returned and set(returned) <= set(top) and budget["returned_count"] < budget["weights"] // 4
    for key in returned:  # the shipped graphs are the plan: each returned projection is a float MatMul again
        file, node = key.split(":", 1)
        assert node in {n.name for n in onnx.load(str(out / file)).graph.node if n.op_type == "MatMul"}
