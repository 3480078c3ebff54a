"""The recipe: one YAML file that says what to train, compress, export and measure.

Every section is a small dataclass validated on load. Errors name the field by its
dotted path and list the allowed values, e.g.
``recipe field distill.strategy: 'fast' is not one of straightforward, ...``.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import reprlib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from edgekit import registry
from edgekit.errors import EdgekitError


class RecipeError(EdgekitError):
    pass


_SHORT = reprlib.Repr()
_SHORT.maxstring, _SHORT.maxother, _SHORT.maxlist, _SHORT.maxdict, _SHORT.maxlevel = 40, 40, 4, 4, 2
SEED_MAX = 2**32 - 1  # numpy and torch seeds


def shown(value: Any) -> str:
    """A value as an error message shows it: short, whatever its size (a YAML alias bomb is huge)."""
    return _SHORT.repr(value)


def _check_range(path: str, value: float | None, low: float, high: float, *, low_open=False, high_open=False) -> None:
    if value is None:
        return
    if not math.isfinite(value):  # NaN compares false with everything: it would pass every bound below
        raise RecipeError(f"recipe field {path}: {value} is not a finite number")
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if too_low or too_high:
        lo = "(" if low_open else "["
        hi = ")" if high_open else "]"
        raise RecipeError(f"recipe field {path}: {value} is outside {lo}{low}, {high}{hi}")


def _check_choice(path: str, value: Any, choices: tuple[str, ...] | str) -> None:
    """``choices``: the allowed values, or a registry kind whose names they are."""
    if isinstance(choices, str):
        choices = registry.names(choices)
    if value not in choices:
        raise RecipeError(f"recipe field {path}: {shown(value)} is not one of {', '.join(choices)}")


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
        _check_range(f"{path}.val_fraction", self.val_fraction, 0, 1, low_open=True, high_open=True)
        _check_range(f"{path}.test_fraction", self.test_fraction, 0, 1, low_open=True, high_open=True)
        _check_range(f"{path}.max_length", self.max_length, 8, 8192)
        _check_range(f"{path}.max_target_length", self.max_target_length, 1, 8192)
        if self.image_size is not None:
            _check_range(f"{path}.image_size", self.image_size, 8, 2048)
        if self.limit is not None:
            _check_range(f"{path}.limit", self.limit, 1, 10**9)
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
        _check_range(f"{path}.epochs", self.epochs, 1, 10_000)
        _check_range(f"{path}.batch_size", self.batch_size, 1, 1 << 16)
        _check_range(f"{path}.lr", self.lr, 0, 1, low_open=True)
        _check_range(f"{path}.weight_decay", self.weight_decay, 0, 1)
        _check_range(f"{path}.warmup_fraction", self.warmup_fraction, 0, 0.5)
        _check_range(f"{path}.seed", self.seed, 0, SEED_MAX)


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
            _check_range(f"{path}.layers[{i}]", k, 1, 1000)


@dataclass
class LoraConfig:
    """LoRA adapters (peft). ``target_modules: null`` picks query/value projections."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] | None = None

    def validate(self, path: str) -> None:
        _check_range(f"{path}.r", self.r, 1, 4096)
        _check_range(f"{path}.alpha", self.alpha, 1, 1 << 16)
        _check_range(f"{path}.dropout", self.dropout, 0, 1, high_open=True)


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
            _check_choice(f"{path}.method", self.method, "pruner")
        _check_range(f"{path}.keep_tokens", self.keep_tokens, 0, 10_000_000)
        if self.keep_tokens and self.method != "vocab":
            raise RecipeError(f"recipe field {path}.keep_tokens: only method vocab keeps vocabulary ids")
        _check_range(f"{path}.amount", self.amount, 0, 1, low_open=True, high_open=True)
        _check_range(f"{path}.recover_epochs", self.recover_epochs, 0, 10_000)
        _check_choice(f"{path}.recover", self.recover, ("distill", "finetune"))
        _check_range(f"{path}.calib_samples", self.calib_samples, 1, 100_000)


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
    lora: LoraConfig = field(default_factory=LoraConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self, path: str) -> None:
        _check_choice(f"{path}.strategy", self.strategy, "strategy")
        _check_choice(f"{path}.loss", self.loss, "loss")
        allowed = registry.get("loss", self.loss).can("options", {})
        for key, value in self.loss_options.items():
            if key not in allowed:
                raise RecipeError(
                    f"recipe field {path}.loss_options.{key}: the {self.loss} loss has "
                    + (f"the options {', '.join(allowed)}" if allowed else "no options")
                )
            _check_range(f"{path}.loss_options.{key}", value, 0, 1000)
        for kind, weight in self.features.items():
            _check_choice(f"{path}.features", kind, "feature-kd")
            _check_range(f"{path}.features.{kind}", weight, 0, 1000)
        for i, layer in enumerate(self.layer_map or []):
            _check_range(f"{path}.layer_map[{i}]", layer, 1, 10_000)
        if self.layer_map is not None and not self.features:
            raise RecipeError(f"recipe field {path}.layer_map: it maps layers for distill.features; set those too")
        _check_range(f"{path}.feature_cache_mb", self.feature_cache_mb, 0, 1 << 20)
        _check_range(f"{path}.temperature", self.temperature, 0, 100, low_open=True)
        _check_range(f"{path}.alpha", self.alpha, 0, 1)
        _check_range(f"{path}.feature_weight", self.feature_weight, 0, 1000)
        _check_range(f"{path}.checkpoint_every", self.checkpoint_every, 1, 10**9)
        for i, w in enumerate(self.teacher_weights or []):
            _check_range(f"{path}.teacher_weights[{i}]", w, 0, 1000)
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
            _check_choice(f"{path}.format", self.format, "format")
        if self.precision is not None:
            _check_choice(f"{path}.precision", self.precision, "precision")
        if self.mode is not None:
            _check_choice(f"{path}.mode", self.mode, "quant-mode")
        _check_range(f"{path}.calib_samples", self.calib_samples, 1, 100_000)
        _check_range(f"{path}.min_agreement", self.min_agreement, 0, 1)
        _check_range(f"{path}.max_drop", self.max_drop, 0, 100)


@dataclass
class BenchConfig:
    devices: list[str] = field(default_factory=lambda: ["cpu"])
    batch_size: int = 1
    runs: int | None = None

    def validate(self, path: str) -> None:
        if not self.devices:
            raise RecipeError(f"recipe field {path}.devices: list at least one device profile")
        _check_range(f"{path}.batch_size", self.batch_size, 1, 4096)
        if self.runs is not None:
            _check_range(f"{path}.runs", self.runs, 1, 1_000_000)


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
            _check_choice(f"{path}.strategies[{i}]", s, "sweep-strategy")
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


@dataclass
class Recipe:
    name: str = "edgekit"
    task: str | None = None
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    lora: LoraStageConfig = field(default_factory=LoraStageConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)

    def validate(self, path: str = "") -> None:
        if not self.name or "/" in self.name:
            raise RecipeError("recipe field name: must be a non-empty name without '/'")
        if self.task is not None:
            _check_choice("task", self.task, "task")
        _check_range("seed", self.seed, 0, SEED_MAX)
        needs_student = not self.sweep.active and self.distill.strategy not in registry.names(
            "strategy", student="self"
        )
        if needs_student and not self.student.model and not self.student.layers:
            raise RecipeError("recipe field student.model: name a student model, or set student.layers")
        for section in ("data", "teacher", "student", "distill", "lora", "prune", "export", "bench", "sweep"):
            value = getattr(self, section)
            if section == "distill" and self.sweep.active:  # the sweep sets the strategy of each cell
                value = dataclasses.replace(value, strategy=registry.names("strategy", teachers="many")[0])
            _validate_tree(value, section)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _validate_tree(obj: Any, path: str) -> None:
    obj.validate(path)
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            _validate_tree(value, f"{path}.{f.name}")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Convert a YAML value to the annotated type, or raise a RecipeError naming ``path``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], path)
    if dataclasses.is_dataclass(tp):
        if value is None:
            return tp()
        if not isinstance(value, dict):
            raise RecipeError(f"recipe field {path}: expected a mapping of fields, got {shown(value)}")
        return from_dict(tp, value, path)
    if origin is dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise RecipeError(f"recipe field {path}: expected a mapping, got {shown(value)}")
        return {_coerce(k, args[0], path): _coerce(v, args[1], f"{path}.{k}") for k, v in value.items()}
    if origin is list:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise RecipeError(f"recipe field {path}: expected a list, got {shown(value)}")
        return [_coerce(v, args[0], f"{path}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise RecipeError(f"recipe field {path}: expected true or false, got {shown(value)}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise RecipeError(f"recipe field {path}: expected a whole number, got {shown(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RecipeError(f"recipe field {path}: expected a number, got {shown(value)}")
        if not math.isfinite(value):
            raise RecipeError(f"recipe field {path}: {value} is not a finite number; give a number such as 0.5")
        return float(value)
    if tp is str:
        if isinstance(value, (dict, list)) or value is None:
            raise RecipeError(f"recipe field {path}: expected text, got {shown(value)}")
        return str(value)
    raise RecipeError(f"recipe field {path}: unsupported type {_type_name(tp)}")


def from_dict(cls: type, data: dict[str, Any], path: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        full = f"{path}.{key}" if path else str(key)
        if key not in names:
            raise RecipeError(
                f"recipe field {shown(full) if len(str(full)) > 60 else full} is unknown; allowed fields here: {', '.join(names)}"
            )
        kwargs[key] = _coerce(value, hints[key], full)
    return cls(**kwargs)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``a.b=c`` (the value read as YAML) into (["a", "b"], c)."""
    if "=" not in text:
        raise RecipeError(f"--set {text!r}: write overrides as section.field=value, e.g. distill.alpha=0.5")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise RecipeError(f"--set {text!r}: the field name is empty")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return parts, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    data = copy.deepcopy(data)
    for text in overrides:
        parts, value = parse_override(text)
        node = data
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise RecipeError(f"--set {text!r}: {part} is not a section")
            node = child
        node[parts[-1]] = value
    return data


def load_recipe(path: str | Path | None = None, overrides: list[str] | None = None) -> Recipe:
    """Load and validate a recipe file (or the embedded default when ``path`` is None)."""
    if path is None:
        from edgekit.resources import recipes_dir

        path = recipes_dir() / "default.yaml"
    path = Path(path)
    if path.is_dir():
        raise RecipeError(f"recipe {path} is a folder; give a recipe .yaml file (a run folder's is {path}/recipe.yaml)")
    if path.exists() and not path.is_file():
        raise RecipeError(f"recipe {path} is not a regular file (a pipe or device?); give a recipe .yaml file")
    if not path.is_file():
        raise RecipeError(f"recipe file {path} does not exist; check the path")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8-sig")) or {}  # a UTF-8 BOM is dropped
    except UnicodeDecodeError as exc:
        raise RecipeError(f"recipe file {path} is not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    except OSError as exc:
        raise RecipeError(f"recipe file {path} cannot be read ({exc.strerror}); check its permissions") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise RecipeError(f"recipe file {path} is not valid YAML{where}; fix the syntax") from None
    if not isinstance(data, dict):
        raise RecipeError(f"recipe file {path} must be a mapping of sections (name, data, teacher, ...)")
    return recipe_from_dict(data, overrides or [])


def recipe_from_dict(data: dict[str, Any], overrides: list[str] | None = None) -> Recipe:
    data = apply_overrides(data, overrides or [])
    recipe = from_dict(Recipe, data)
    recipe.validate()
    return recipe


def infer_task(data: DataConfig) -> str:
    """Image or text classification, from where the data comes from (a folder or digits: images)."""
    image, text = (registry.names("task", modality=m, generates=False)[0] for m in ("image", "text"))
    if data.train:
        return image if Path(data.train).is_dir() else text
    if data.dataset == "digits":
        return image
    raise RecipeError(f"recipe field task: say '{image}' or '{text}' for a Hugging Face dataset")
