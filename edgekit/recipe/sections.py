"""The recipe's sections: one small dataclass each (data, train, teacher, student, LoRA, prune, distill,
export, bench, sweep), each checking its own fields."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from edgekit import registry
from edgekit.recipe.fields import SEED_MAX, RecipeError, check_choice, check_range


@dataclass
class DataConfig:
    """Where the examples come from.

    ``dataset: digits`` is scikit-learn's built-in handwritten digits (no download).
    Any other ``dataset`` is a Hugging Face dataset ``NAME[:CONFIG]`` or a folder
    written by ``datasets.save_to_disk``. ``train``/``val``/``test`` are local
    CSV/TSV/JSONL files (text) or ImageFolder folders (images) and win over ``dataset``.
    ``unlabeled`` adds examples without labels to distillation's transfer set (the teacher labels
    them; the KD term learns from them, the label term does not): a ``.txt`` file with one text per
    line, a CSV/TSV/JSONL file's ``text_column``, or a folder of images in any layout.
    For ``task: text2text`` (T5 and other encoder-decoders) ``label_column`` holds the target text.
    """

    dataset: str | None = "digits"
    train: str | None = None
    val: str | None = None
    test: str | None = None
    unlabeled: str | None = None
    text_column: str = "text"
    label_column: str = "label"
    image_column: str = "image"
    image_size: int | None = None
    max_length: int = 128
    max_target_length: int = 128
    val_fraction: float = 0.15
    test_fraction: float = 0.2
    limit: int | None = None

    def validate(self, path: str) -> None:
        check_range(f"{path}.val_fraction", self.val_fraction, 0, 1, low_open=True, high_open=True)
        check_range(f"{path}.test_fraction", self.test_fraction, 0, 1, low_open=True, high_open=True)
        check_range(f"{path}.max_length", self.max_length, 8, 8192)
        check_range(f"{path}.max_target_length", self.max_target_length, 1, 8192)
        if self.image_size is not None:
            check_range(f"{path}.image_size", self.image_size, 8, 2048)
        if self.limit is not None:
            check_range(f"{path}.limit", self.limit, 1, 10**9)
        if self.train is None and self.dataset is None:
            raise RecipeError(f"recipe field {path}: give either 'dataset' or a 'train' file/folder")
        if (self.val or self.test) and not self.train:
            raise RecipeError(f"recipe field {path}.train: 'val'/'test' files need a 'train' file too")


@dataclass
class TrainConfig:
    """Optimisation settings. ``lr: null`` picks a default by model family:
    1e-3 for vision models trained from scratch, 1e-4 for pretrained vision models,
    5e-5 for transformers. ``batch_size: null`` picks the largest of 64, 32, 16 and 8 that gives the
    run at least 150 optimizer steps (a small dataset at batch 64 got too few updates to learn)."""

    epochs: int = 10
    lr: float | None = None
    batch_size: int | None = None
    weight_decay: float = 0.01
    warmup_fraction: float = 0.06
    seed: int | None = None

    def validate(self, path: str) -> None:
        check_range(f"{path}.epochs", self.epochs, 1, 10_000)
        check_range(f"{path}.batch_size", self.batch_size, 1, 1 << 16)
        check_range(f"{path}.lr", self.lr, 0, 1, low_open=True)
        check_range(f"{path}.weight_decay", self.weight_decay, 0, 1)
        check_range(f"{path}.warmup_fraction", self.warmup_fraction, 0, 0.5)
        check_range(f"{path}.seed", self.seed, 0, SEED_MAX)


@dataclass
class TeacherConfig:
    """The large model. ``train`` set: fine-tune it on the task first."""

    model: str = "resnet18"
    pretrained: bool = False
    train: TrainConfig | None = None

    def validate(self, path: str) -> None:
        if not self.model:
            raise RecipeError(f"recipe field {path}.model: must name a model")


@dataclass
class StudentConfig:
    """The small model: a model name/id/folder, or ``layers: [K]`` to derive it from a transformer
    teacher by keeping K of its layers (evenly spaced, weights copied). With the ``successive``
    strategy ``layers`` is the chain, e.g. ``[6, 3, 1]``: each link is derived from and taught by
    the one before."""

    model: str | None = "mobilenet_v2"
    pretrained: bool = False
    layers: list[int] | None = None

    def validate(self, path: str) -> None:  # a student is needed unless self-quantized or a sweep: Recipe.validate
        for i, k in enumerate(self.layers or []):
            check_range(f"{path}.layers[{i}]", k, 1, 1000)


@dataclass
class LoraConfig:
    """LoRA adapters (peft). ``target_modules: null`` picks query/value projections."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] | None = None

    def validate(self, path: str) -> None:
        check_range(f"{path}.r", self.r, 1, 4096)
        check_range(f"{path}.alpha", self.alpha, 1, 1 << 16)
        check_range(f"{path}.dropout", self.dropout, 0, 1, high_open=True)


@dataclass
class LoraStageConfig(LoraConfig):
    """``edgekit finetune --lora`` / ``--qlora``: adapters (and the head) train, then merge into a
    plain model. ``qlora`` stores the base in 4-bit NF4 (double quantization) first.
    ``target_modules: null`` picks query/value for transformers, every non-grouped conv and
    non-head linear layer for CNNs. ``train.lr: null`` is 5e-4 (a LoRA default that holds across
    tasks; full fine-tunes use 5e-5)."""

    enabled: bool = False
    qlora: bool = False
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=3))

    @property
    def active(self) -> bool:
        """A LoRA stage runs: ``enabled``, or ``qlora`` (which implies it)."""
        return self.enabled or self.qlora


@dataclass
class PruneConfig:
    """``method``: l1-unstructured (zero the smallest weights of every Linear/Conv; dense shapes
    stay), heads (remove attention heads), ffn (remove feed-forward neurons), channels (remove
    conv channels), vocab (keep only the tokens the training data uses). ``amount``: the fraction
    removed in each layer (not used by vocab). ``recover_epochs`` > 0 trains
    afterwards: ``recover: distill`` learns from the unpruned model's logits, ``finetune`` from labels."""

    method: str | None = None
    amount: float = 0.3
    recover_epochs: int = 0
    recover: str = "distill"
    calib_samples: int = 256
    keep_tokens: int = 0  # vocab: also the first N ids of the tokenizer's vocabulary

    def validate(self, path: str) -> None:
        if self.method is not None:
            check_choice(f"{path}.method", self.method, "pruner")
        check_range(f"{path}.keep_tokens", self.keep_tokens, 0, 10_000_000)
        if self.keep_tokens and self.method != "vocab":
            raise RecipeError(f"recipe field {path}.keep_tokens: only method vocab keeps vocabulary ids")
        check_range(f"{path}.amount", self.amount, 0, 1, low_open=True, high_open=True)
        check_range(f"{path}.recover_epochs", self.recover_epochs, 0, 10_000)
        check_choice(f"{path}.recover", self.recover, ("distill", "finetune"))
        check_range(f"{path}.calib_samples", self.calib_samples, 1, 100_000)


@dataclass
class DistillConfig:
    """Hinton KD: loss = (1 - alpha) * CE(labels) + alpha * T^2 * KL(teacher_T || student_T).
    ``loss`` names the logit loss of classifier KD (a registry entry of kind ``loss``: ``hinton``, or
    ``dkd``, Decoupled KD); ``loss_options`` sets that loss's own options (DKD: ``target_weight``,
    ``nontarget_weight``), each defaulting to the value its registry entry gives.

    Strategies: ``straightforward`` (one teacher), ``successive`` (a chain of students, each
    teaching the next; see student.layers), ``multi-teacher`` (a weighted ensemble of the teacher
    and ``teachers``; ``teacher_weights`` fixed, or learned with ``learn_teacher_weights``),
    ``self-quantized`` (the teacher's own weights in 4-bit NF4 with LoRA adapters, see ``lora``).
    ``feature_weight`` > 0 adds feature KD: the student's pooled feature (the head's input), through
    a learned projection, matched to the teacher's by mean squared error.
    ``features`` adds intermediate-layer KD terms with their weights (``{hidden: 1, relation: 1}``;
    kinds: the ``feature-kd`` registry entries), over the ``layer_map`` (the teacher layer, 1-based,
    for each student layer; default: the layers a derived student was cut from, else an even map);
    the teacher's intermediate outputs are kept in memory up to ``feature_cache_mb``.
    ``augment`` N > 0 adds N perturbed copies of each labelled training text (words dropped, replaced
    and swapped; :mod:`edgekit.data.augment`) to the transfer set without labels: the teacher labels
    them and only the KD term learns from them. Text classification only; each epoch sees 1 + N times
    the examples.
    """

    strategy: str = "straightforward"
    temperature: float = 4.0
    alpha: float = 0.3
    teachers: list[str] = field(default_factory=list)
    teacher_weights: list[float] | None = None
    learn_teacher_weights: bool = False
    feature_weight: float = 0.0
    baseline: bool = False
    cache: bool = True
    checkpoint_every: int = 200
    deterministic: bool = True
    loss: str = "hinton"
    loss_options: dict[str, float] = field(default_factory=dict)
    features: dict[str, float] = field(default_factory=dict)
    layer_map: list[int] | None = None
    feature_cache_mb: float = 1024.0
    augment: int = 0
    lora: LoraConfig = field(default_factory=LoraConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self, path: str) -> None:
        check_choice(f"{path}.strategy", self.strategy, "strategy")
        check_choice(f"{path}.loss", self.loss, "loss")
        allowed = registry.get("loss", self.loss).can("options", {})
        for key, value in self.loss_options.items():
            if key not in allowed:
                raise RecipeError(
                    f"recipe field {path}.loss_options.{key}: the {self.loss} loss has "
                    + (f"the options {', '.join(allowed)}" if allowed else "no options")
                )
            check_range(f"{path}.loss_options.{key}", value, 0, 1000)
        for kind, weight in self.features.items():
            check_choice(f"{path}.features", kind, "feature-kd")
            check_range(f"{path}.features.{kind}", weight, 0, 1000)
        for i, layer in enumerate(self.layer_map or []):
            check_range(f"{path}.layer_map[{i}]", layer, 1, 10_000)
        if self.layer_map is not None and not self.features:
            raise RecipeError(f"recipe field {path}.layer_map: it maps layers for distill.features; set those too")
        check_range(f"{path}.feature_cache_mb", self.feature_cache_mb, 0, 1 << 20)
        check_range(f"{path}.augment", self.augment, 0, 100)
        check_range(f"{path}.temperature", self.temperature, 0, 100, low_open=True)
        check_range(f"{path}.alpha", self.alpha, 0, 1)
        check_range(f"{path}.feature_weight", self.feature_weight, 0, 1000)
        check_range(f"{path}.checkpoint_every", self.checkpoint_every, 1, 10**9)
        for i, w in enumerate(self.teacher_weights or []):
            check_range(f"{path}.teacher_weights[{i}]", w, 0, 1000)
        if self.teacher_weights is not None and self.learn_teacher_weights:
            raise RecipeError(
                f"recipe field {path}.teacher_weights: give fixed weights or learn_teacher_weights, not both"
            )
        if self.teacher_weights is not None and sum(self.teacher_weights) <= 0:
            raise RecipeError(f"recipe field {path}.teacher_weights: the weights must not all be 0")
        ensemble = registry.get("strategy", self.strategy).can("teachers") == "many"
        if not ensemble and (self.teachers or self.teacher_weights or self.learn_teacher_weights):
            many = ", ".join(registry.names("strategy", teachers="many"))
            raise RecipeError(f"recipe field {path}.teachers/teacher_weights: several teachers need strategy {many}")


@dataclass
class ExportConfig:
    """format/precision/mode left empty come from the preset (default: ONNX int8, preset cpu-int8).
    ``int8: false`` is the older spelling of ``precision: fp32``."""

    format: str | None = None
    precision: str | None = None
    int8: bool | None = None
    mode: str | None = None
    preset: str | None = None
    calib_samples: int = 256
    min_agreement: float | None = None
    max_drop: float | None = None  # points of the task metric (accuracy, BLEU) quantization may cost (int8/int4 ONNX)

    @property
    def resolved_precision(self) -> str | None:
        if self.precision:
            return self.precision
        return None if self.int8 is None else ("int8" if self.int8 else "fp32")

    def validate(self, path: str) -> None:
        if self.format is not None:
            check_choice(f"{path}.format", self.format, "format")
        if self.precision is not None:
            check_choice(f"{path}.precision", self.precision, "precision")
        if self.mode is not None:
            check_choice(f"{path}.mode", self.mode, "quant-mode")
        check_range(f"{path}.calib_samples", self.calib_samples, 1, 100_000)
        check_range(f"{path}.min_agreement", self.min_agreement, 0, 1)
        check_range(f"{path}.max_drop", self.max_drop, 0, 100)


@dataclass
class BenchConfig:
    devices: list[str] = field(default_factory=lambda: ["cpu"])
    batch_size: int = 1
    runs: int | None = None

    def validate(self, path: str) -> None:
        if not self.devices:
            raise RecipeError(f"recipe field {path}.devices: list at least one device profile")
        check_range(f"{path}.batch_size", self.batch_size, 1, 4096)
        if self.runs is not None:
            check_range(f"{path}.runs", self.runs, 1, 1_000_000)


@dataclass
class SweepConfig:
    """Strategies x student sizes in one run: the seeds' Table II (rows: student sizes, columns:
    strategies). ``students``: a number keeps that many of the teacher's layers (transformers), a
    name is a model (e.g. mobilenet_v2). Every cell is distilled, exported, evaluated and benched
    (``sweep/<strategy>-<student>/``); the ``ship`` cell (``best``: highest validation score, the
    smaller on a tie; or a cell name such as ``successive-L3``) goes on through lora, prune, export.

    ``labels-only`` trains the same initial student on labels alone (alpha 0); ``successive`` chains
    ``successive_via`` (default for layer counts: one link halfway between the teacher and the largest
    student) and then the students from largest to smallest, each taught by the link before;
    ``multi-teacher`` learns from the teacher and ``distill.teachers`` (default: the first link of the
    successive chain), with ``distill.teacher_weights`` or learned weights. ``distill.strategy``,
    ``student.model`` and ``student.layers`` are not used in a sweep."""

    strategies: list[str] = field(default_factory=list)
    students: list[str] = field(default_factory=list)
    successive_via: list[str] | None = None
    ship: str = "best"

    @property
    def active(self) -> bool:
        return bool(self.strategies)

    def validate(self, path: str) -> None:
        for i, s in enumerate(self.strategies):
            check_choice(f"{path}.strategies[{i}]", s, "sweep-strategy")
        for name, values in (("strategies", self.strategies), ("students", self.students)):
            if len(set(values)) != len(values):
                raise RecipeError(f"recipe field {path}.{name}: {values} lists an entry twice")
        if self.strategies and not self.students:
            raise RecipeError(
                f"recipe field {path}.students: list the student sizes to sweep, e.g. [3, 1] (layers) or [mobilenet_v2]"
            )
        if self.students and not self.strategies:
            raise RecipeError(
                f"recipe field {path}.strategies: list the strategies to sweep, e.g. "
                f"[{', '.join(registry.names('sweep-strategy'))}]"
            )
        for i, s in enumerate([*self.students, *(self.successive_via or [])]):
            if s.isdigit() and int(s) < 1:
                raise RecipeError(f"recipe field {path}.students[{i}]: a student keeps at least 1 layer")
        if self.ship != "best" and self.strategies:
            cells = [sweep_cell(s, k) for s in self.strategies for k in self.students]
            if self.ship not in cells:
                raise RecipeError(f"recipe field {path}.ship: {self.ship!r} is not 'best' or one of {', '.join(cells)}")


def student_label(student: str) -> str:
    """``3`` -> ``L3`` (layers kept), a model name -> its last path part."""
    return f"L{student}" if student.isdigit() else Path(student).name


def sweep_cell(strategy: str, student: str) -> str:
    return f"{strategy}-{student_label(student)}"
