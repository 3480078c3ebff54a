"""Intermediate-layer KD (edgekit/distill/features.py) against the models' own numbers: the attention
distributions rebuilt from hooked query/key outputs equal the model's eager attention, a student that
is a copy of its teacher has zero loss in every kind, the layer map follows derived layers, and pairs
of other widths, depths and head counts get projections or clear refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import save_tiny_bert
from edgekit.errors import EdgekitError

LABELS = ["HUM", "LOC", "NUM"]
TEXTS = ["who wrote the odyssey ?", "where is paris ?", "how many people live in tokyo , japan ?", "when ?"]


def _bert(tmp_path, tokenizer_dir, name, **size):
    from edgekit.models import load_model

    folder = save_tiny_bert(tmp_path / name, tokenizer_dir, **size)
    return load_model(str(folder), task="text-classification", label_names=LABELS)


def _batch(handle, texts=TEXTS):
    encoded = handle.tokenizer(texts, padding=True, return_tensors="pt")
    return {k: encoded[k] for k in handle.input_names if k in encoded}


def _objective(teacher, student, kinds, layer_map=None, cache_mb=64.0, n=len(TEXTS)):
    from edgekit.distill.features import IntermediateKD
    from edgekit.train.objectives import LogitKD

    inner = LogitKD(np.zeros((n, len(LABELS)), dtype=np.float32), 4.0, 0.0)  # alpha 0: CE only
    return IntermediateKD(inner, teacher, student, kinds, layer_map, cache_mb)


def _feature_loss(objective, student, inputs, labels):
    """The objective's loss minus its cross-entropy: the intermediate terms alone."""
    objective.start(student.module)
    try:
        objective.see_batch(inputs)
        logits = student.logits(inputs)
        indices = torch.arange(len(labels))
        total = objective.loss(logits, None, indices, labels)
        return total - torch.nn.functional.cross_entropy(logits, labels)
    finally:
        objective.finish()


def test_attention_rebuilt_from_hooked_queries_and_keys_is_the_models_own(tmp_path, minilm_tokenizer_dir):
    from transformers import AutoModelForSequenceClassification

    from edgekit.distill.features import _log_relation, _Taps

    folder = save_tiny_bert(tmp_path / "b", minilm_tokenizer_dir, hidden=48, layers=2, heads=4)
    model = AutoModelForSequenceClassification.from_pretrained(folder, attn_implementation="eager").eval()
    from transformers import AutoTokenizer

    encoded = AutoTokenizer.from_pretrained(folder)(TEXTS, padding=True, return_tensors="pt")
    taps = _Taps(model, ["bert.encoder.layer.1.attention.self.query", "bert.encoder.layer.1.attention.self.key"])
    with torch.no_grad():
        expected = model(**encoded, output_attentions=True).attentions[1]  # [B, heads, L, L]
    q, k = (
        taps.values["bert.encoder.layer.1.attention.self.query"],
        taps.values["bert.encoder.layer.1.attention.self.key"],
    )
    taps.close()
    ours = _log_relation(q, k, 4, encoded["attention_mask"].bool()).exp()
    real = encoded["attention_mask"].bool()
    for b in range(len(TEXTS)):  # rows of real query tokens (padded queries are never scored)
        n = int(real[b].sum())
        assert torch.allclose(ours[b, :, :n, :n], expected[b, :, :n, :n], atol=1e-5)
        if n < real.shape[1]:
            assert ours[b, :, :n, n:].abs().max().item() == 0.0  # padding gets no attention


def test_a_copy_of_the_teacher_has_zero_intermediate_loss_in_every_kind(tmp_path, minilm_tokenizer_dir):
    from edgekit.distill.derive import derive_student

    teacher = _bert(tmp_path, minilm_tokenizer_dir, "t", hidden=48, layers=4)
    teacher.module.eval()
    copy4 = derive_student(teacher, 4)  # all four layers: the same network
    copy4.module.eval()
    inputs, labels = _batch(teacher), torch.tensor([0, 1, 2, 2])
    kinds = {"hidden": 1.0, "attention": 1.0, "relation": 1.0}
    objective = _objective(teacher, copy4, kinds)
    assert objective.report()["feature_kd"]["layer_map"] == [[1, 1], [2, 2], [3, 3], [4, 4]]
    # a student cut to two layers (teacher layers 2 and 4) whose attention is sharper (random-init
    # attention is near uniform): every kind is > 0, far above what the copy shows (only the fp16
    # rounding of the teacher's cached outputs)
    half = derive_student(teacher, 2)
    half.module.eval()
    with torch.no_grad():
        for name, p in half.module.bert.encoder.named_parameters():
            if ".query." in name or ".key." in name:
                p.mul_(8)
    for kind in kinds:
        same = _feature_loss(_objective(teacher, copy4, {kind: 1.0}), copy4, inputs, labels).item()
        objective = _objective(teacher, half, {kind: 1.0})
        assert objective.report()["feature_kd"]["layer_map"] == [[1, 2], [2, 4]]
        cut = _feature_loss(objective, half, inputs, labels).item()
        assert abs(same) < 1e-6 and cut > 1e-4, (kind, same, cut)


def test_the_teacher_runs_once_per_example_then_the_cache_serves_it(tmp_path, minilm_tokenizer_dir):
    from edgekit.distill.derive import derive_student

    teacher = _bert(tmp_path, minilm_tokenizer_dir, "t", hidden=48, layers=4)
    student = derive_student(teacher, 2)
    inputs, labels = _batch(teacher), torch.tensor([0, 1, 2, 2])
    objective = _objective(teacher, student, {"hidden": 1.0})
    objective.start(student.module)
    losses = []
    for _ in range(3):
        objective.see_batch(inputs)
        losses.append(objective.loss(student.logits(inputs), None, torch.arange(4), labels).item())
    report = objective.report()["feature_kd"]
    objective.finish()
    assert report["teacher_batches"] == 1 and report["cache"]["examples"] == 4 and not report["cache"]["full"]
    assert report["teacher_examples"] == 4
    assert losses[0] == pytest.approx(losses[1], abs=1e-6) == losses[2]  # cached = computed (both fp16-rounded)
    assert not student.module.bert.encoder.layer[0]._forward_hooks  # finish() takes the hooks off
    # a cache too small for one example: the teacher runs every time, and the report says so
    objective = _objective(teacher, student, {"hidden": 1.0}, cache_mb=1e-6)
    objective.start(student.module)
    for _ in range(2):
        objective.see_batch(inputs)
        objective.loss(student.logits(inputs), None, torch.arange(4), labels)
    report = objective.report()["feature_kd"]
    objective.finish()
    assert report["teacher_batches"] == 2 and report["cache"]["full"] and report["cache"]["examples"] == 0
    # a batch half seen before: the teacher runs on the unseen rows only, and the stitched rows are the same
    objective = _objective(teacher, student, {"hidden": 1.0})
    objective.start(student.module)
    short = {k: v[:2, :] for k, v in inputs.items()}  # (padded to the long batch: the stitching re-pads)
    objective.see_batch(short)
    objective.loss(student.logits(short), None, torch.arange(2), labels[:2])
    objective.see_batch(inputs)
    mixed = objective.loss(student.logits(inputs), None, torch.arange(4), labels).item()
    report = objective.report()["feature_kd"]
    objective.finish()
    assert report["teacher_examples"] == 4 and report["teacher_batches"] == 2
    assert mixed == pytest.approx(losses[0], abs=1e-6)


def test_narrower_students_get_projections_and_relations_need_none(tmp_path, minilm_tokenizer_dir):
    teacher = _bert(tmp_path, minilm_tokenizer_dir, "t", hidden=48, layers=4)
    narrow = _bert(tmp_path, minilm_tokenizer_dir, "s", hidden=32, layers=2)
    objective = _objective(teacher, narrow, {"hidden": 1.0, "relation": 1.0})
    kd = objective.report()["feature_kd"]
    assert kd["projections"] == ["Linear", "Linear"] and kd["layer_map"] == [[1, 2], [2, 4]]
    assert kd["relation_heads"] == 2
    assert sum(p.numel() for p in objective.parameters()) == 2 * (32 * 48 + 48)  # the projections train
    loss = _feature_loss(objective, narrow, _batch(teacher), torch.tensor([0, 1, 2, 2]))
    assert torch.isfinite(loss) and loss.item() > 0
    # other head counts: relation KD works, attention KD is refused with the way out
    four_heads = _bert(tmp_path, minilm_tokenizer_dir, "h", hidden=32, layers=2, heads=4)
    assert _objective(teacher, four_heads, {"relation": 1.0}).report()["feature_kd"]["relation_heads"] == 2
    with pytest.raises(EdgekitError, match="teacher has 2 heads, the student 4; use the relation kind"):
        _objective(teacher, four_heads, {"attention": 1.0})
    # an override maps layers as told, or names what is wrong
    assert _objective(teacher, narrow, {"hidden": 1.0}, [1, 3]).report()["feature_kd"]["layer_map"] == [[1, 1], [2, 3]]
    with pytest.raises(EdgekitError, match="names teacher layer 9; the teacher has 4 layers"):
        _objective(teacher, narrow, {"hidden": 1.0}, [1, 9])
    with pytest.raises(EdgekitError, match="has 3 entries for a student of 2 layers"):
        _objective(teacher, narrow, {"hidden": 1.0}, [1, 2, 3])
    with pytest.raises(EdgekitError, match="is a transformer pair; use hidden or attention or relation"):
        _objective(teacher, narrow, {"hint": 1.0})


def test_cnn_hints_at_shared_strides_through_1x1_adapters(tmp_path):
    from conftest import settle_batchnorm
    from edgekit.models import load_model

    labels = [str(i) for i in range(10)]
    teacher = load_model("resnet18", task="image-classification", label_names=labels, image_size=32)
    student = load_model("mobilenet_v2", task="image-classification", label_names=labels, image_size=32)
    for h in (teacher, student):
        settle_batchnorm(h.module)
    objective = _objective(teacher, student, {"hint": 1.0}, n=4)
    kd = objective.report()["feature_kd"]
    assert kd["hint_strides"] == [8, 16, 32]
    # resnet18's stages are 128, 256, 512 channels wide; mobilenet_v2's 32, 96, 1280 at those strides
    assert [(a.in_channels, a.out_channels) for a in objective.adapters] == [(32, 128), (96, 256), (1280, 512)]
    inputs = {"pixel_values": torch.randn(4, 3, 32, 32)}
    loss = _feature_loss(objective, student, inputs, torch.tensor([0, 1, 2, 3]))
    assert torch.isfinite(loss) and loss.item() > 0
    with pytest.raises(EdgekitError, match="is a CNN pair; use hint"):
        _objective(teacher, student, {"hidden": 1.0}, n=4)
