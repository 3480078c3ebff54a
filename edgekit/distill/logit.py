"""Classification KD, the ``kd_objective`` job of classification tasks: a registered logit loss
against the cached transfer set of one teacher or a weighted ensemble (learned weights fitted on the
validation split), with feature KD when the recipe asks for it."""

from __future__ import annotations

from functools import partial

from edgekit import registry
from edgekit.errors import EdgekitError
from edgekit.log import info as log


def logit_objective(cfg, teachers, student, data):
    """Classification KD (the task's ``kd_objective`` job): a registered logit loss (Hinton's by
    default) against the cached transfer set of one teacher, or of a weighted ensemble whose learned
    weights are fitted on the validation split first; feature KD on the head input when asked."""
    from edgekit.train.objectives import LogitKD, MultiTeacherKD

    want_features = cfg.feature_weight > 0
    sets = _teacher_tables(cfg, teachers, data.train, features=want_features)
    features = {}
    if want_features:
        width = student.head().in_features
        features = dict(teacher_features=sets[0].features, student_width=width, feature_weight=cfg.feature_weight)
    entry = registry.get("loss", cfg.loss, option="distill.loss")
    options = {**entry.can("options", {}), **cfg.loss_options}
    loss_fn = entry.load()
    features["loss_fn"] = partial(loss_fn, **options) if options else loss_fn
    strategy = registry.get("strategy", cfg.strategy)
    if strategy.can("teachers") == "many":
        weights, fitted = cfg.teacher_weights, None
        if cfg.learn_teacher_weights:
            weights, fitted = _fit_weights(cfg, teachers, data.val)
        objective = MultiTeacherKD(
            [s.logits for s in sets], weights, cfg.temperature, cfg.alpha, fitted=fitted, **features
        )
    else:
        objective = LogitKD(sets[0].logits, cfg.temperature, cfg.alpha, **features)
    if not cfg.features:
        return objective
    if strategy.can("student") == "self":
        raise EdgekitError(
            f"distill.features: the {cfg.strategy} strategy trains LoRA adapters on the teacher's own layers; "
            f"intermediate-layer KD works with the {', '.join(registry.names('strategy', student='model'))} strategies"
        )
    from edgekit.distill.features import IntermediateKD

    return IntermediateKD(objective, teachers[0], student, cfg.features, cfg.layer_map, cfg.feature_cache_mb)


def _teacher_tables(cfg, teachers, split, *, features: bool = False, what: str = "logits"):
    """Each teacher's transfer set on ``split`` (the first teacher's features too when asked)."""
    from edgekit.train.transfer import transfer_set

    sets = []
    for i, t in enumerate(teachers):
        s = transfer_set(
            t,
            split,
            features=features and i == 0,
            cache=cfg.cache,
            desc=f"teacher {i + 1} {what}" if len(teachers) > 1 else f"teacher {what}",
        )
        log(
            f"  transfer set ({split.name}): {len(split)} examples, {'cache hit' if s.hit else 'computed'} "
            f"in {s.seconds:.1f} s" + (f" ({s.path})" if s.path else "")
        )
        sets.append(s)
    return sets


def _fit_weights(cfg, teachers, val):
    """Learned ensemble weights: fitted on the validation split, held out from the teachers' training,
    where their errors and disagreements show (on training examples every teacher is right)."""
    from edgekit.train.objectives import fit_teacher_weights

    sets = _teacher_tables(cfg, teachers, val, what="validation logits")
    weights, fitted = fit_teacher_weights([s.logits for s in sets], val.labels, f"{val.name} split")
    log(
        "  teacher weights fitted on the validation split: "
        + ", ".join(f"{w:.3f}" for w in weights)
        + f" (teacher accuracy {', '.join(f'{a:.1%}' for a in fitted['teacher_accuracy'])}; "
        f"{fitted['disagreements']} of {fitted['examples']} examples disputed)"
    )
    return weights, fitted
