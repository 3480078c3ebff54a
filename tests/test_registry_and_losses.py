"""The registry drives the CLI, the recipe and dispatch: every entry is tested by being registered.
The losses and objectives against values computed by hand."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import assert_user_error, run_cli
from edgekit import registry
from edgekit.errors import EdgekitError

KINDS = [
    "task",
    "strategy",
    "sweep-strategy",
    "loss",
    "feature-kd",
    "pruner",
    "quant-mode",
    "precision",
    "format",
    "runner",
    "profile",
    "preset",
]


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_lists_names(kind):
    names = registry.names(kind)
    assert names and len(set(names)) == len(names)
    assert registry.choices(kind).count(" or ") == (1 if len(names) > 1 else 0)


@pytest.mark.parametrize(
    "entry", [e for k in KINDS for e in registry.entries(k) if e.target], ids=lambda e: f"{e.kind}:{e.name}"
)
def test_every_target_imports(entry):
    assert entry.load() is not None


@pytest.mark.parametrize("name", registry.names("task"))
def test_every_task_spec_names_its_jobs_and_they_import(name):
    from edgekit.tasks import task_spec
    from edgekit.tasks.base import JOBS

    spec = task_spec(name)
    assert spec.name == name and spec.modality in ("image", "text")
    assert set(spec.jobs) == set(JOBS), f"{name} lacks {set(JOBS) - set(spec.jobs)}"
    for job in spec.jobs:
        assert callable(spec.job(job)), job
    assert spec.score({spec.score_key: 0.5}) == 0.5
    assert set(spec.headline({k: 1 for k in spec.headline_keys})) == set(spec.headline_keys)


def test_unknown_names_are_one_line_naming_the_choices():
    with pytest.raises(EdgekitError, match=r"--method 'magic' is not one of l1-unstructured, heads, ffn, channels"):
        registry.get("pruner", "magic", option="--method")
    with pytest.raises(EdgekitError, match="task 'poetry' is not one of"):
        from edgekit.tasks import task_spec

        task_spec("poetry")


@pytest.mark.parametrize(
    "kind,field",
    [
        ("strategy", "distill.strategy"),
        ("pruner", "prune.method"),
        ("format", "export.format"),
        ("precision", "export.precision"),
        ("quant-mode", "export.mode"),
        ("task", "task"),
        ("sweep-strategy", "sweep.strategies"),
        ("loss", "distill.loss"),
    ],
)
def test_recipe_validation_reads_the_registry(kind, field):
    from edgekit.recipe import RecipeError, recipe_from_dict

    def value(name):
        return f"[{name}]" if field == "sweep.strategies" else name

    extra = ["sweep.students=[1]"] if field == "sweep.strategies" else []
    extra += ["distill.teachers=[x]"] if field == "distill.strategy" else []
    for name in registry.names(kind):
        sets = [f"{field}={value(name)}", *extra]
        if field == "distill.strategy" and registry.get("strategy", name).can("teachers") != "many":
            sets.remove("distill.teachers=[x]")
        recipe_from_dict({}, sets)
    with pytest.raises(RecipeError, match="is not one of"):
        recipe_from_dict({}, [f"{field}={value('not-a-' + kind)}", *extra])
    # a newly registered name is accepted at once, and refused again once it is gone
    keep = [e for e in extra if not e.startswith("distill.teachers")]
    registry.register(kind, "brand-new", summary="test entry", teachers="one", student="model")
    try:
        recipe_from_dict({}, [f"{field}={value('brand-new')}", *keep])
    finally:
        registry.unregister(kind, "brand-new")
    with pytest.raises(RecipeError):
        recipe_from_dict({}, [f"{field}={value('brand-new')}", *keep])


def test_cli_help_lists_what_the_registry_has():
    for command, kind in (("prune", "pruner"), ("distill", "strategy"), ("export", "format"), ("bench", "profile")):
        text = " ".join(run_cli(command, "--help").stdout.split())
        for name in registry.names(kind):
            assert name in text, (command, name)


def test_a_missing_extra_is_one_line_with_the_install_command(monkeypatch):
    monkeypatch.setitem(registry.EXTRAS, "train", ("surely_not_installed_module",))
    entry = registry.get("pruner", "heads")
    with pytest.raises(registry.MissingExtra, match=r"pip install 'edgekit\[train\]'"):
        entry.load()


def test_pruners_declare_the_families_they_handle():
    assert set(registry.names("pruner", families="torchvision")) == {"l1-unstructured", "channels"}
    assert set(registry.names("pruner", families="hf")) == {"l1-unstructured", "heads", "ffn", "vocab"}
    assert registry.names("pruner", seq2seq=True) == ("vocab",)  # the one that handles T5


# --------------------------------------------------------------------------------------------------
# losses and objectives, against hand-computed values


def _hand_kd(student, teacher, label, t, alpha):
    """(1 - alpha) CE + alpha T^2 KL(p_T || q_T) for one example, in plain Python."""

    def softmax(z, temp):
        e = [math.exp(v / temp) for v in z]
        return [v / sum(e) for v in e]

    ce = -math.log(softmax(student, 1.0)[label])
    p, q = softmax(teacher, t), softmax(student, t)
    kl = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    return (1 - alpha) * ce + alpha * t * t * kl


@pytest.mark.parametrize("entry", registry.entries("runner"), ids=lambda e: e.name)
def test_every_runner_benches_and_evaluates_and_its_option_exists(entry):
    runner = entry.load()
    assert callable(runner.bench) and callable(runner.evaluate)
    option = entry.can("selected_by")
    if option:  # the CLI option that selects it is on both commands that run bundles
        for command in ("bench", "eval"):
            assert f"--{option}" in run_cli(command, "--help", env={"COLUMNS": "200"}).stdout


def test_runner_choice_reads_the_registry():
    from edgekit.bench.runners import choose

    assert choose().name == "local" and choose(host=None, emulate=False).name == "local"
    assert choose(host="pi@mypi").name == "ssh" and choose(emulate=True).name == "emulated"
    with pytest.raises(EdgekitError, match="--host and --emulate contradict each other"):
        choose(host="pi", emulate=True)
    registry.register("runner", "adb", "edgekit.bench.runners:LOCAL", selected_by="adb", bench_data=False)
    try:  # a new runner is chosen by its own option, with nothing else edited
        assert choose(adb="serial123").name == "adb" and choose().name == "local"
    finally:
        registry.unregister("runner", "adb")


def test_runner_dispatch_errors_are_one_line(tmp_path):
    proc = run_cli("bench", tmp_path / "none", "--host", "pi", "--emulate")
    assert_user_error(proc, "--host and --emulate contradict")
    data = tmp_path / "d.csv"
    data.write_text("text,label\na,b\n")
    proc = run_cli("bench", tmp_path / "none", "--emulate", "--data", data)
    assert_user_error(proc, "--data cannot be combined with --emulate", "eval with --data")
    proc = run_cli("bench", tmp_path / "none", "--host", "pi", "--data", data)
    assert_user_error(proc, "--data cannot be combined with --host", "copy the data file")


@pytest.mark.parametrize("t,alpha", [(1.0, 0.5), (4.0, 0.3), (2.0, 1.0), (4.0, 0.0)])
def test_kd_loss_matches_the_formula(t, alpha):
    from edgekit.train.losses import kd_loss

    student = [[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]]
    teacher = [[1.5, 1.0, -0.5], [-1.0, 2.0, 0.0]]
    labels = [0, 2]
    got = kd_loss(torch.tensor(student), torch.tensor(teacher), torch.tensor(labels), t, alpha).item()
    want = sum(_hand_kd(s, te, y, t, alpha) for s, te, y in zip(student, teacher, labels)) / 2
    assert got == pytest.approx(want, rel=1e-5)


def test_kd_loss_t_squared_keeps_soft_gradients_on_scale():
    """Hinton's T^2: the soft term's gradient magnitude stays about the same as T grows (it would
    shrink as 1/T^2 without it)."""
    from edgekit.train.losses import kd_loss

    torch.manual_seed(0)
    teacher = torch.randn(64, 10)
    labels = torch.randint(0, 10, (64,))
    norms = []
    for t in (4.0, 16.0):
        student = (torch.randn(64, 10) * 0.01).requires_grad_()
        kd_loss(student, teacher, labels, t, 1.0).backward()
        norms.append(student.grad.norm().item())
    # d/dz T^2 KL = T (q_T - p_T) ~ (z - v) / classes at high T: the same at both temperatures;
    # without the T^2 factor the second would be 16x smaller
    assert 0.8 < norms[1] / norms[0] < 1.25, norms


def test_kd_loss_without_a_teacher_is_cross_entropy():
    from edgekit.train.losses import kd_loss

    logits, labels = torch.tensor([[1.0, 2.0], [0.5, -0.5]]), torch.tensor([1, 0])
    assert kd_loss(logits, None, labels, 4.0, 0.7).item() == pytest.approx(F.cross_entropy(logits, labels).item())


def test_multi_teacher_fixed_weights_are_normalised_and_mix_logits():
    from edgekit.train.objectives import MultiTeacherKD

    a = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    b = np.array([[0.0, 3.0], [3.0, 0.0]], dtype=np.float32)
    objective = MultiTeacherKD([a, b], weights=[3.0, 1.0], temperature=2.0, alpha=0.5)
    assert objective.betas().tolist() == pytest.approx([0.75, 0.25])
    mixed = objective.teacher(torch.tensor([0, 1]))
    assert mixed.numpy() == pytest.approx(0.75 * a + 0.25 * b)
    assert objective.report()["teacher_weights"] == pytest.approx([0.75, 0.25])
    assert objective.report()["teacher_weights_learned"] is False
    assert not objective.weight_logits.requires_grad


def _teachers_of_known_quality(n: int = 400, classes: int = 4, wrong: float = 0.4, seed: int = 0):
    """Two confident teachers on the same labels: one right on every example, one wrong on ``wrong`` of them."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    good = np.eye(classes, dtype=np.float32)[labels] * 4
    flipped = np.where(rng.random(n) < wrong, (labels + 1) % classes, labels)
    bad = np.eye(classes, dtype=np.float32)[flipped] * 4
    return labels, good, bad, int((flipped != labels).sum())


def test_learned_teacher_weights_move_toward_the_teacher_that_is_right():
    from edgekit.train.objectives import MultiTeacherKD, fit_teacher_weights

    labels, good, bad, wrong = _teachers_of_known_quality()
    weights, report = fit_teacher_weights([bad, good], labels, "val split")
    assert weights[1] > 0.9 > 0.1 > weights[0], weights
    assert sum(weights) == pytest.approx(1.0)
    assert report["teacher_accuracy"] == pytest.approx([1 - wrong / len(labels), 1.0])
    assert report["disagreements"] == wrong and report["examples"] == len(labels)
    assert report["ensemble_nll_fitted"] < report["ensemble_nll_equal_weights"]
    objective = MultiTeacherKD([bad, good], weights, 4.0, 0.5, fitted=report)
    assert objective.report()["teacher_weights"] == pytest.approx(weights, abs=1e-6)
    assert objective.report()["teacher_weights_learned"] is True
    # teachers that agree everywhere give no reason to prefer one: the weights stay near equal
    same, _ = fit_teacher_weights([good, good.copy()], labels, "val split")
    assert same == pytest.approx([0.5, 0.5], abs=1e-3)


def test_unlabeled_examples_reach_only_the_kd_term():
    from edgekit.train.losses import kd_loss, labelled_cross_entropy

    logits = torch.tensor([[2.0, 0.0, -1.0], [0.1, 0.3, 0.2], [0.0, 1.0, 0.0]])
    teacher = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 3.0]])
    labels = torch.tensor([0, -1, -1])
    assert labelled_cross_entropy(logits, labels).item() == pytest.approx(
        F.cross_entropy(logits[:1], labels[:1]).item()
    )
    nobody = labelled_cross_entropy(logits.clone().requires_grad_(), torch.tensor([-1, -1, -1]))
    assert nobody.item() == 0.0 and nobody.requires_grad  # no NaN from a mean over no examples
    # the loss of a partly unlabeled batch: CE over the labelled row, KL over all three
    t, alpha = 2.0, 0.3
    soft = F.kl_div(F.log_softmax(logits / t, -1), F.softmax(teacher / t, -1), reduction="batchmean") * t * t
    expected = (1 - alpha) * F.cross_entropy(logits[:1], labels[:1]) + alpha * soft
    assert kd_loss(logits, teacher, labels, t, alpha).item() == pytest.approx(expected.item(), rel=1e-6)
    # labels-only on an unlabeled row gives it no gradient
    grad_logits = logits.clone().requires_grad_()
    kd_loss(grad_logits, teacher, labels, t, 0.0).backward()
    assert grad_logits.grad[1:].abs().max().item() == 0.0 and grad_logits.grad[0].abs().max().item() > 0


def _dkd_by_hand(s: np.ndarray, t: np.ndarray, target: int, temperature: float) -> tuple[float, float]:
    """TCKD and NCKD of one example, from the paper's definitions."""

    def softmax(z):
        e = np.exp(z - z.max())
        return e / e.sum()

    p_s, p_t = softmax(s / temperature), softmax(t / temperature)
    b_s, b_t = np.array([p_s[target], 1 - p_s[target]]), np.array([p_t[target], 1 - p_t[target]])
    tckd = float(np.sum(b_t * np.log(b_t / b_s)))
    others = [i for i in range(len(s)) if i != target]
    n_s, n_t = p_s[others] / p_s[others].sum(), p_t[others] / p_t[others].sum()
    nckd = float(np.sum(n_t * np.log(n_t / n_s)))
    return tckd, nckd


def test_dkd_matches_the_papers_definitions_computed_by_hand():
    from edgekit.train.dkd import dkd_loss
    from edgekit.train.losses import kd_loss

    s = np.array([[1.5, -0.5, 0.25, 2.0], [0.0, 0.5, -1.0, 1.0]], dtype=np.float64)
    t = np.array([[3.0, 0.5, -1.0, 1.0], [-2.0, 2.5, 0.0, 0.5]], dtype=np.float64)
    labels, temperature, alpha, tw, nw = [0, -1], 4.0, 0.6, 1.0, 8.0
    # the unlabeled second example takes the teacher's top class (1) as its target
    parts = [_dkd_by_hand(s[0], t[0], 0, temperature), _dkd_by_hand(s[1], t[1], 1, temperature)]
    soft = temperature**2 * np.mean([tw * a + nw * b for a, b in parts])
    ce = float(F.cross_entropy(torch.tensor(s[:1]), torch.tensor([0])))
    got = dkd_loss(
        torch.tensor(s),
        torch.tensor(t),
        torch.tensor(labels),
        temperature,
        alpha,
        target_weight=tw,
        nontarget_weight=nw,
    )
    assert got.item() == pytest.approx((1 - alpha) * ce + alpha * soft, rel=1e-9)
    # the paper's identity: KL = TCKD + (1 - p_t of the teacher) NCKD, so DKD with those weights is Hinton KD
    one_s, one_t, y = torch.tensor(s[:1]), torch.tensor(t[:1]), torch.tensor([0])
    p_target = torch.softmax(one_t / temperature, -1)[0, 0].item()
    dkd = dkd_loss(one_s, one_t, y, temperature, 1.0, target_weight=1.0, nontarget_weight=1 - p_target)
    assert dkd.item() == pytest.approx(kd_loss(one_s, one_t, y, temperature, 1.0).item(), rel=1e-9)
    # two classes: no non-target distribution, DKD is TCKD alone (= the binary KL, i.e. Hinton's soft term)
    two_s, two_t = torch.tensor([[0.3, -0.2]]), torch.tensor([[2.0, -1.0]])
    binary = dkd_loss(two_s, two_t, torch.tensor([1]), 2.0, 1.0, target_weight=1.0, nontarget_weight=8.0)
    assert binary.item() == pytest.approx(kd_loss(two_s, two_t, torch.tensor([1]), 2.0, 1.0).item(), rel=1e-5)
    # a confident teacher and student: finite, no log(0)
    sure = dkd_loss(
        torch.tensor([[60.0, 0.0, 0.0]]),
        torch.tensor([[80.0, 0.0, 1.0]]),
        torch.tensor([0]),
        1.0,
        0.5,
        target_weight=1.0,
        nontarget_weight=8.0,
    )
    assert torch.isfinite(sure)


def test_dkd_is_a_registered_loss_with_its_options_checked_by_the_recipe():
    from edgekit.recipe import RecipeError, recipe_from_dict

    assert "dkd" in registry.names("loss")
    assert registry.get("loss", "dkd").can("options") == {"target_weight": 1.0, "nontarget_weight": 8.0}
    ok = recipe_from_dict({"distill": {"loss": "dkd", "loss_options": {"nontarget_weight": 2}}})
    assert ok.distill.loss_options == {"nontarget_weight": 2.0}
    for options, needle in (
        ({"beta": 2}, "loss_options.beta: the dkd loss has the options target_weight, nontarget_weight"),
        ({"nontarget_weight": -1}, "outside [0, 1000]"),
        ({"nontarget_weight": float("nan")}, "not a finite number"),
    ):
        with pytest.raises(RecipeError, match=re.escape(needle)):
            recipe_from_dict({"distill": {"loss": "dkd", "loss_options": options}})
    with pytest.raises(RecipeError, match="the hinton loss has no options"):
        recipe_from_dict({"distill": {"loss_options": {"target_weight": 1}}})
    with pytest.raises(RecipeError, match="fixed weights or learn_teacher_weights, not both"):
        recipe_from_dict(
            {"distill": {"strategy": "multi-teacher", "teacher_weights": [1, 2], "learn_teacher_weights": True}}
        )


def test_logit_kd_feature_term_projects_widths_and_reports_it():
    from edgekit.train.objectives import LogitKD

    teacher_logits = np.zeros((4, 3), dtype=np.float32)
    features = np.ones((4, 8), dtype=np.float32)
    objective = LogitKD(teacher_logits, 4.0, 0.5, teacher_features=features, student_width=5, feature_weight=2.0)
    assert objective.needs_features and objective.report() == {"feature_projection": "linear 5 -> 8"}
    loss = objective.feature_loss(torch.zeros(2, 5), torch.tensor([0, 1]))
    bias = objective.projection.bias.detach()
    assert loss.item() == pytest.approx(2.0 * F.mse_loss(bias.expand(2, 8), torch.ones(2, 8)).item(), rel=1e-5)


def test_an_unknown_logit_loss_is_one_line_before_anything_is_written(tmp_path):
    out = tmp_path / "student"
    proc = run_cli(
        "distill", "--teacher", "resnet18", "--student", "mobilenet_v2", "--out", out, "--set", "distill.loss=nope"
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "distill.loss: 'nope' is not one of hinton" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()
