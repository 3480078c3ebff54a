"""Intermediate-layer KD: the student matches the teacher inside the network, not only at the logits.

Outputs are collected by module name through forward hooks (as torchdistill's io_dict does), so no
model is edited. The kinds (``distill.features: {kind: weight}``):

- ``hidden`` (TinyBERT): each mapped student layer's output matched to its teacher layer's by mean
  squared error over real tokens, through a learned linear projection when the widths differ.
- ``attention`` (TinyBERT): each mapped pair's attention distributions, softmax(QK^T / sqrt(d)) per head,
  matched by KL over real tokens. Needs the same number of heads.
- ``relation`` (MiniLMv2): self-attention relations of the last mapped pair, softmax(XX^T / sqrt(d_r))
  for X = queries, keys and values split into relation heads, matched by KL. Needs no projection and
  no common width or head count.
- ``hint`` (FitNets, CNNs): the feature map at each output stride both networks have (8, 16, 32),
  the student's through a learned 1x1 convolution (and pooled to the teacher's size), by MSE.

Layer map: a student derived by keeping layers maps each kept layer to the teacher layer it came from;
otherwise layers are mapped evenly (student layer i of k to teacher layer round(i n / k)); and
``distill.layer_map`` (the teacher layer, 1-based, for each student layer) overrides both.

The teacher runs with the student on the examples of a batch it has not seen (its inputs come from
``see_batch``), one at a time so that its outputs do not depend on the batch; what it gives for an
example is kept in memory in fp16, up to
``distill.feature_cache_mb``, so later epochs reuse it instead of running the teacher again. The report
says how long the teacher ran, on how many examples, and what was cached.
"""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.nn.functional as F

from edgekit import registry
from edgekit.distill.taps import (
    _HINT_STRIDES,
    _heads,
    _log_relation,
    _masked_mean,
    _qkv,
    _relation_heads,
    _relation_kl,
    _stage_outputs,
    _Taps,
    layer_map,
    transformer_layers,
)
from edgekit.errors import EdgekitError
from edgekit.train.objectives import Objective


class IntermediateKD(Objective):
    """A logit objective (``inner``) plus intermediate-layer terms against a teacher run on the batch."""

    def __init__(self, inner: Objective, teacher, student, kinds: dict[str, float], override, cache_mb: float):
        super().__init__()
        self.inner = inner
        self.needs_features = inner.needs_features
        self.kinds = {k: float(w) for k, w in kinds.items() if w > 0}
        self.teacher_handle = [teacher]  # a list: the teacher's weights are not this module's state
        self.cache_bytes = int(cache_mb * 2**20)
        self.cache: dict[int, dict[str, torch.Tensor]] = {}
        self.cached_bytes, self.teacher_seconds, self.teacher_batches, self.cache_full = 0, 0.0, 0, False
        self.cached_examples, self.teacher_examples = 0, 0
        self.inputs: dict[str, torch.Tensor] | None = None
        self._student_taps: _Taps | None = None
        if teacher.family != student.family:
            raise EdgekitError(
                f"intermediate-layer KD needs a teacher and student of one kind (transformers or CNNs); "
                f"{teacher.arch} -> {student.arch} can use logit KD only (drop distill.features)"
            )
        right = registry.names("feature-kd", families=teacher.family)
        wrong = sorted(k for k in self.kinds if k not in right)
        if wrong:
            pair = "transformer" if teacher.family == "hf" else "CNN"
            raise EdgekitError(
                f"distill.features {', '.join(wrong)}: {teacher.arch} -> {student.arch} is a {pair} pair; "
                f"use {' or '.join(right)}"
            )
        if teacher.family == "hf":
            self._plan_transformer(teacher, student, override)
        else:
            self._plan_cnn(teacher, student)

    # planning: which modules, which projections, checked before training ----------------------------

    def _plan_transformer(self, teacher, student, override) -> None:
        if teacher.spec.text and teacher.tokenizer is not None and student.tokenizer is not None:
            if teacher.tokenizer.get_vocab() != student.tokenizer.get_vocab():
                raise EdgekitError(
                    "intermediate-layer KD matches token by token and needs one tokenizer; teacher and student "
                    "tokenizers differ (derive the student with --student-layers, or drop distill.features)"
                )
        t_list, _ = transformer_layers(teacher)
        s_list, _ = transformer_layers(student)
        self.pairs = layer_map(teacher, student, override)
        self.t_heads, self.s_heads = _heads(teacher), _heads(student)
        t_width = int(teacher.module.config.hidden_size)
        s_width = int(student.module.config.hidden_size)
        taps_t, taps_s = [], []
        self.t_names: dict[str, list] = {}
        self.s_names: dict[str, list] = {}
        if "hidden" in self.kinds:
            self.t_names["hidden"] = [f"{t_list}.{t}" for _, t in self.pairs]
            self.s_names["hidden"] = [f"{s_list}.{s}" for s, _ in self.pairs]
            self.projections = torch.nn.ModuleList(
                [torch.nn.Identity() if s_width == t_width else torch.nn.Linear(s_width, t_width) for _ in self.pairs]
            )
        if "attention" in self.kinds or "relation" in self.kinds:
            t_qkv = [_qkv(teacher, f"{t_list}.{t}") for _, t in self.pairs]
            s_qkv = [_qkv(student, f"{s_list}.{s}") for s, _ in self.pairs]
            if any(q is None for q in t_qkv + s_qkv):
                raise EdgekitError(
                    f"cannot find the query/key/value projections of {teacher.arch} or {student.arch} for "
                    "attention or relation KD; use the hidden kind"
                )
            if "attention" in self.kinds:
                if self.t_heads != self.s_heads:
                    raise EdgekitError(
                        f"attention KD matches head by head: the teacher has {self.t_heads} heads, the student "
                        f"{self.s_heads}; use the relation kind (MiniLMv2), which needs no common head count"
                    )
                self.t_names["attention"] = [list(q[:2]) for q in t_qkv]
                self.s_names["attention"] = [list(q[:2]) for q in s_qkv]
            if "relation" in self.kinds:
                self.t_names["relation"] = [list(t_qkv[-1])]
                self.s_names["relation"] = [list(s_qkv[-1])]
                self.relation_heads = _relation_heads(t_width, s_width, self.t_heads)
        for names in self.t_names.values():
            taps_t += [n for item in names for n in (item if isinstance(item, list) else [item])]
        for names in self.s_names.values():
            taps_s += [n for item in names for n in (item if isinstance(item, list) else [item])]
        self.t_taps, self.s_taps = sorted(set(taps_t)), sorted(set(taps_s))

    def _plan_cnn(self, teacher, student) -> None:
        size = int(teacher.preprocessing["image_size"])
        t_stages, s_stages = _stage_outputs(teacher, size), _stage_outputs(student, size)
        strides = [s for s in _HINT_STRIDES if s in t_stages and s in s_stages]
        if not strides:
            raise EdgekitError(
                f"hint KD found no feature-map stride that {teacher.arch} and {student.arch} share at "
                f"{size}x{size} ({sorted(t_stages)} vs {sorted(s_stages)}); drop distill.features"
            )
        self.strides = strides
        self.t_names = {"hint": [t_stages[s][0] for s in strides]}
        self.s_names = {"hint": [s_stages[s][0] for s in strides]}
        self.t_sizes = [t_stages[s][2] for s in strides]
        self.adapters = torch.nn.ModuleList(
            [torch.nn.Conv2d(s_stages[s][1], t_stages[s][1], kernel_size=1, bias=False) for s in strides]
        )
        self.t_taps, self.s_taps = sorted(set(self.t_names["hint"])), sorted(set(self.s_names["hint"]))

    # the training loop's calls ------------------------------------------------------------------------

    def start(self, module: torch.nn.Module) -> None:
        self._student_taps = _Taps(module, self.s_taps)
        self.inner.start(module)

    def finish(self) -> None:
        if self._student_taps is not None:
            self._student_taps.close()
            self._student_taps = None
        self.cached_examples = len(self.cache)
        self.cache.clear()  # the teacher's outputs are rebuilt by a resumed run; the memory goes now
        self.inner.finish()

    def see_batch(self, inputs):
        self.inputs = inputs
        self.inner.see_batch(inputs)

    def loss(self, logits, features, indices, labels):
        loss = self.inner.loss(logits, features, indices, labels)
        student = self._student_taps.values if self._student_taps is not None else {}
        if not student:
            return loss
        teacher = self._teacher_outputs(indices, logits.device)
        mask = self._token_mask(logits.device)
        for kind, weight in self.kinds.items():
            loss = loss + weight * getattr(self, f"_{kind}_loss")(student, teacher, mask)
        return loss

    def report(self) -> dict[str, Any]:
        kd: dict[str, Any] = {
            "kinds": self.kinds,
            "teacher_forward_seconds": round(self.teacher_seconds, 3),
            "teacher_batches": self.teacher_batches,
            "teacher_examples": self.teacher_examples,
            "cache": {
                "examples": len(self.cache) or self.cached_examples,
                "mb": round(self.cached_bytes / 2**20, 2),
                "full": self.cache_full,
            },
        }
        if hasattr(self, "pairs"):
            kd["layer_map"] = [[s + 1, t + 1] for s, t in self.pairs]
        if hasattr(self, "projections"):
            kd["projections"] = [type(p).__name__ for p in self.projections]
        if hasattr(self, "relation_heads"):
            kd["relation_heads"] = self.relation_heads
        if hasattr(self, "strides"):
            kd["hint_strides"] = self.strides
        return {**self.inner.report(), "feature_kd": kd}

    # the teacher's outputs, from the cache or a forward ------------------------------------------------

    def _teacher_outputs(self, indices: torch.Tensor, device) -> dict[str, torch.Tensor]:
        """The teacher's tapped outputs for the batch: cached rows from the cache, the others from one
        teacher forward over just those rows (stored while the cache has room)."""
        keys = [int(i) for i in indices.tolist()]
        mask = (self.inputs or {}).get("attention_mask")
        lengths = None if mask is None else [int(x) for x in mask.sum(-1).tolist()]
        missing = [row for row, key in enumerate(keys) if key not in self.cache]
        fresh: dict[int, dict[str, torch.Tensor]] = {}
        if missing:
            start = time.perf_counter()
            teacher = self.teacher_handle[0]
            teacher.module.to(device).eval()
            taps = _Taps(teacher.module, self.t_taps)
            try:
                for row in missing:
                    # one example at a time, without padding: its outputs do not depend on which batch it
                    # came in, so a run resumed from a checkpoint (its cache empty) sees the same values
                    one = {k: v[row : row + 1] for k, v in self.inputs.items()}
                    if lengths is not None:
                        one = {k: v[:, : lengths[row]] if v.dim() == 2 else v for k, v in one.items()}
                    with torch.no_grad():
                        teacher.logits(one)
                    # fp16, as the cache keeps them: first sight and a cache hit give the same values
                    fresh[row] = {n: v.detach()[0].to(torch.float16).cpu() for n, v in taps.values.items()}
                    self._store(keys[row], fresh[row])
            finally:
                taps.close()
            self.teacher_seconds += time.perf_counter() - start
            self.teacher_batches += 1
            self.teacher_examples += len(missing)
        entries = [fresh[row] if row in fresh else self.cache[key] for row, key in enumerate(keys)]
        longest = None if lengths is None else int(mask.shape[1])
        out = {}
        for name in self.t_taps:
            items = [e[name].float() for e in entries]
            if longest is not None:
                items = [F.pad(x, (0, 0, 0, longest - x.shape[0])) for x in items]
            out[name] = torch.stack(items).to(device)
        return out

    def _store(self, key: int, entry: dict[str, torch.Tensor]) -> None:
        if self.cache_full:
            return
        size = sum(v.numel() * v.element_size() for v in entry.values())
        if self.cached_bytes + size > self.cache_bytes:
            self.cache_full = True
            return
        self.cache[key], self.cached_bytes = entry, self.cached_bytes + size

    def _token_mask(self, device) -> torch.Tensor | None:
        mask = (self.inputs or {}).get("attention_mask")
        return None if mask is None else mask.to(device).bool()

    # the losses ---------------------------------------------------------------------------------------

    def _hidden_loss(self, student, teacher, mask):
        total = 0.0
        for proj, s_name, t_name in zip(self.projections, self.s_names["hidden"], self.t_names["hidden"]):
            diff = (proj(student[s_name].float()) - teacher[t_name]).pow(2).mean(-1)  # [B, L]
            total = total + _masked_mean(diff, mask)
        return total / len(self.pairs)

    def _attention_loss(self, student, teacher, mask):
        total = 0.0
        for (sq, sk), (tq, tk) in zip(self.s_names["attention"], self.t_names["attention"]):
            s_att = _log_relation(student[sq].float(), student[sk].float(), self.s_heads, mask)
            t_att = _log_relation(teacher[tq], teacher[tk], self.t_heads, mask)
            total = total + _relation_kl(s_att, t_att, mask)
        return total / len(self.pairs)

    def _relation_loss(self, student, teacher, mask):
        (s_names,), (t_names,) = self.s_names["relation"], self.t_names["relation"]
        total = 0.0
        for s_name, t_name in zip(s_names, t_names):  # query-query, key-key, value-value relations
            s_rel = _log_relation(student[s_name].float(), student[s_name].float(), self.relation_heads, mask)
            t_rel = _log_relation(teacher[t_name], teacher[t_name], self.relation_heads, mask)
            total = total + _relation_kl(s_rel, t_rel, mask)
        return total / 3

    def _hint_loss(self, student, teacher, mask):
        total = 0.0
        for adapter, size, s_name, t_name in zip(
            self.adapters, self.t_sizes, self.s_names["hint"], self.t_names["hint"]
        ):
            s_map = adapter(student[s_name].float())
            if tuple(s_map.shape[-2:]) != tuple(size):
                s_map = F.adaptive_avg_pool2d(s_map, size)
            total = total + F.mse_loss(s_map, teacher[t_name])
        return total / len(self.strides)
