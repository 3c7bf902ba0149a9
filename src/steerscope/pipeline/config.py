"""The pipeline configuration: a strict, nested dataclass schema read from YAML.

``load_config(path_or_dict)`` builds a :class:`PipelineConfig`; any key that is not in the
schema, or a value of the wrong type, raises one :class:`~steerscope.errors.SteerscopeError`
naming the key path (``vectors.dim.kl_threshold``) and the valid keys. Value checks that need
no model or data (ranges, method names) run in :func:`check_values`; checks against the
model's ``config.json`` and the prompt files run in :mod:`steerscope.pipeline.inputs`. Both
run before any compute.

Sections (every key documented in ``docs/pipeline.md``): ``model``, ``data``, ``vectors``,
``evaluation``, ``patching``, ``circuits``, ``freeze``, ``svv``, ``sparsify``, ``report``,
and the top-level ``name`` and ``seed``.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from steerscope.errors import SteerscopeError
from steerscope.patching_conventions import GRAD_AT, LOGITS_AT, POOLING
from steerscope.vectors.train_config import KEEPS, LR_SCHEDULES, RANKINGS, VALIDATIONS
from steerscope.vectors.training_data import HARMLESS_REFUSE_SOURCES

TRAINED_METHODS = ("ntp", "po")
FREEZE_MODES = ("qk", "ov", "svv", "mlp")
SPARSIFY_RULES = ("grad", "ie", "dropout", "bottomk")
TRAIN_PRESETS = ("quick", "paper")
VAL_PROMPTS = ("dim_val", "split")
PATCHING_FLIPS = ("refusal", "tokens")
PATCHING_METRICS = ("logit_diff", "kl")
PATCHING_GRAPHS = ("fine", "coarse")
RANDOM_KINDS = ("pruned", "unpruned")  # patching.circuits.RANDOM_KINDS (no torch import here)


# --- sections ------------------------------------------------------------------------------
@dataclass
class ModelSection:
    """Which model to load and how (passed to :func:`steerscope.models.load_model`)."""

    source: str = "default"  # 'default', 'demo', a local folder, a .gguf file or a Hub id
    dtype: str = "float32"  # float32 | bfloat16 | float16 | auto
    device: str = "cpu"  # cpu | cuda | cuda:N | mps | auto (per-rank cuda under torchrun)
    device_map: str | dict[str, Any] | None = None  # e.g. "auto": shard over GPUs
    revision: str | None = None  # Hub revision
    attn_implementation: str | None = None
    # prompt format: None = the tokenizer's own chat template (dates pinned); a name such as
    # 'llama3-no-system-header' (the authors' released Llama-3 format) or Jinja text
    chat_template: str | None = None


@dataclass
class DataSection:
    """Prompt sources and sample sizes (per class). A source is a file, a named dataset
    (resolved in ``data_dir`` / ``$STEERSCOPE_DATA_DIR`` or on the Hub) or ``builtin:NAME``."""

    data_dir: str | None = None
    harmful_train: str = "harmful_train"
    harmless_train: str = "harmless_train"
    harmful_val: str = "harmful_val"
    harmless_val: str = "harmless_val"
    harmful_test: str = "jailbreakbench"
    harmless_test: str = "harmless_test"
    n_train: int = 128
    n_val: int = 32
    n_test: int = 100
    seed: int | None = None  # None: the top-level seed


@dataclass
class DimSection:
    """DIM extraction and selection (:func:`steerscope.vectors.select_dim`)."""

    layers: list[int] | None = None  # candidate layers (None: all)
    positions: list[int] | None = None  # candidate positions (None: post-instruction tokens)
    filter: bool = True  # refusal-score filter of train/val prompts
    max_layer_fraction: float = 0.8
    layer_cutoff: str = "int"  # int: layer >= int(f*L) (released code) | real: layer >= f*L
    kl_threshold: float = 0.1
    relax_kl: bool = False  # no survivor: double kl_threshold until one (recorded, warned)
    induce_threshold: float = 0.0
    score_all: bool = False  # score every filter of every candidate (slower, same choice)


@dataclass
class PreferenceSection:
    """Self-generated preference data for NTP/PO."""

    n_prompts: int | None = None  # per class, from the train sets (None: all)
    max_new_tokens: int = 64
    val_prompts: str = "dim_val"  # dim_val: generate validation pairs from DIM's val prompts
    val_fraction: float = 0.2  # split: hold out this share of the training pairs instead
    drop_mislabelled: bool = False  # drop pairs whose winner fails the refusal-substring check
    harmless_refuse: str = "instruction"  # instruction (paper) | dim: DIM +1 steered refusals


@dataclass
class TrainSection:
    """One NTP or PO training grid: the preset's values, each overridable."""

    preset: str = "quick"  # quick | paper
    lr: list[float] | None = None
    batch_size: list[int] | None = None
    seed: list[int] | None = None
    phi: list[float] | None = None
    epochs: int | None = None
    max_response_tokens: int | None = None
    factors: list[float] | None = None
    # selection conventions (None: the preset's; see steerscope.vectors.train_config)
    lr_schedule: str | None = None  # per_epoch | per_step
    validation: str | None = None  # deployed | mean_factor
    keep: str | None = None  # best_epoch | last_epoch
    ranking: str | None = None  # released | loss_then_match


@dataclass
class VectorsSection:
    """Which steering vectors to make. ``dim`` is required (it picks the layer every other
    method steers at); ``ntp``/``po`` are trained; others (``pca``, ``probe``, ``caa``, any
    registered method) are read at DIM's layer and position."""

    methods: list[str] = field(default_factory=lambda: ["dim", "ntp", "po"])
    layer: int | None = None  # restrict DIM's candidate layers to this one
    position: int | None = None  # read position of the extraction methods (None: DIM's)
    batch_size: int = 16
    dim: DimSection = field(default_factory=DimSection)
    preference: PreferenceSection = field(default_factory=PreferenceSection)
    ntp: TrainSection = field(default_factory=TrainSection)
    po: TrainSection = field(default_factory=TrainSection)
    extraction: dict[str, dict[str, Any]] = field(default_factory=dict)  # method -> kwargs


@dataclass
class EvaluationSection:
    """Steered evaluation (the steering table)."""

    max_new_tokens: int = 64
    batch_size: int = 16
    bypass_alpha: float = -1.0
    induce_alpha: float = 1.0
    judge: str | None = None  # None: substring only; else a get_judge spec


@dataclass
class PatchingSection:
    """EAP-IG patching of each patched vector on flipped test prompts (paper section 4)."""

    enabled: bool = True
    methods: list[str] | None = None  # patched vectors (None: dim, ntp, po in vectors.methods)
    n_prompts: int = 100  # at most this many flipped prompts per patching dataset
    ig_steps: int = 10  # EAP-IG steps T
    max_new_tokens: int = 64  # rollout length
    batch_size: int = 16  # rollout batch
    flip: str = "refusal"  # refusal: refusal outcome flipped | tokens: steered tokens differ
    # flip refusal: harmful outcomes by this judge (a get_judge spec, paper: llamaguard; steered
    # unsafe and base safe); None: the refusal substrings (offline). Harmless: substrings.
    judge: str | None = None
    metric: str = "logit_diff"  # logit_diff | kl (directional KL)
    tau: float = 0.0  # kl only: mask positions with KL(P_steer || P_base) < tau
    reverse: bool = False  # reverse roles: clean = unsteered, corrupt = steered
    graph: str = "fine"  # fine: per-head q/k/v inputs | coarse: q/k/v grouped per layer
    grad_at: str = GRAD_AT[0]  # EAP-IG gradient: pre_norm residual | post_norm input (paper)
    logits_at: str = LOGITS_AT[0]  # soft-capped models: post_cap | pre_cap (released code)
    pooling: str = POOLING[0]  # dataset_mean | positions (released code)
    top_n: int = 100  # top edges (by |score|) for results.json's edge_types
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class CircuitsSection:
    """Circuits from the patching scores: faithfulness, minimum circuit, comparisons."""

    enabled: bool = True
    sizes: list[int] | None = None  # faithfulness-curve sizes (None: 0.5% ... 100% of edges)
    grid_step: float | None = None  # instead of sizes: every grid_step of the edges (paper 0.0341)
    grid_max: float = 1.0  # the size grid's largest fraction of the edges
    threshold: float = 0.85  # faithful at >= threshold
    n_random: int = 5  # random circuits of twice the minimum size
    random: str = "pruned"  # pruned: on steer->logits paths, refilled to size | unpruned
    position_metrics: bool = False  # released code's per-position metrics at each curve size
    refine_steps: int = 4  # bisection steps refining the minimum faithful size
    overlap_sizes: list[int] | None = None  # matched sizes (None: each minimum circuit's size)
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class FreezeSection:
    enabled: bool = True
    method: str = "dim"  # the vector ablated: dim or an extraction method (not ntp/po)
    modes: list[str] = field(default_factory=lambda: list(FREEZE_MODES))
    n_prompts: int | None = None
    max_new_tokens: int = 64
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class SvvSection:
    enabled: bool = True
    top_tokens: int = 20
    n_heads: int = 10
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class SparsifySection:
    enabled: bool = True
    rules: list[str] = field(default_factory=lambda: list(SPARSIFY_RULES))
    taus: list[float] = field(default_factory=lambda: [0, 0.1, 0.3, 0.5, 1, 1.5, 2, 2.5])
    n_prompts: int | None = None
    max_new_tokens: int | None = None  # tokens per steered generation (None: evaluation's)
    seed: int = 42
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class ReportSection:
    enabled: bool = True
    title: str | None = None


@dataclass
class PipelineConfig:
    """The whole run. ``name`` prefixes the run folder ``<out>/<name>-<hash>``."""

    name: str = "run"
    seed: int = 42
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    vectors: VectorsSection = field(default_factory=VectorsSection)
    evaluation: EvaluationSection = field(default_factory=EvaluationSection)
    patching: PatchingSection = field(default_factory=PatchingSection)
    circuits: CircuitsSection = field(default_factory=CircuitsSection)
    freeze: FreezeSection = field(default_factory=FreezeSection)
    svv: SvvSection = field(default_factory=SvvSection)
    sparsify: SparsifySection = field(default_factory=SparsifySection)
    report: ReportSection = field(default_factory=ReportSection)

    def to_dict(self) -> dict[str, Any]:
        """The config as plain JSON-able data (every key, defaults included)."""
        return dataclasses.asdict(self)

    @property
    def data_seed(self) -> int:
        return self.seed if self.data.seed is None else self.data.seed


# --- strict construction from dicts ---------------------------------------------------------
def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return "mapping"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "mapping"
    return getattr(tp, "__name__", str(tp))


_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


class _Mismatch(Exception):
    pass


def _convert(value: Any, tp, path: str) -> Any:
    """``value`` checked against the annotation ``tp`` (int → float widening allowed)."""
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _convert(value, arg, path)
            except _Mismatch:
                continue
        raise _Mismatch
    if tp is type(None):
        if value is None:
            return None
        raise _Mismatch
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise _Mismatch
        return _build(tp, value, path)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise _Mismatch
        (item,) = typing.get_args(tp)
        out = []
        for i, v in enumerate(value):
            try:
                out.append(_convert(v, item, f"{path}[{i}]"))
            except _Mismatch:
                raise SteerscopeError(
                    f"config key '{path}[{i}]' must be {_type_name(item)}, got {v!r}",
                    f"fix {path} in the config") from None
        return out
    if origin is dict:
        if not isinstance(value, dict):
            raise _Mismatch
        _, val_tp = typing.get_args(tp)
        return {str(k): _convert(v, val_tp, f"{path}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _Mismatch
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _FLOAT.match(value.strip()):
            return float(value)  # PyYAML reads 1e9 / 1.0e9 (no exponent sign) as a string
        raise _Mismatch
    if tp is str:
        if isinstance(value, str):
            return value
        raise _Mismatch
    raise _Mismatch  # pragma: no cover - an annotation this loader does not know


def _build(cls, data: dict, path: str):
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        key = str(key)
        where = f"{path}.{key}" if path else key
        if key not in names:
            raise SteerscopeError(f"unknown config key '{where}'",
                                  f"valid keys{' of ' + path if path else ''}: {', '.join(names)}")
        try:
            kwargs[key] = _convert(value, hints[key], where)
        except _Mismatch:
            raise SteerscopeError(
                f"config key '{where}' must be {_type_name(hints[key])}, got {value!r}",
                f"fix {where} in the config") from None
    return cls(**kwargs)


def config_from_dict(data: dict | None) -> PipelineConfig:
    """A :class:`PipelineConfig` from a nested dict (strict: unknown keys and wrong types
    raise), then :func:`check_values`."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SteerscopeError(f"a pipeline config must be a mapping, got {type(data).__name__}",
                              "write 'key: value' pairs at the top level")
    cfg = _build(PipelineConfig, data, "")
    check_values(cfg)
    return cfg


def load_config(source: str | Path | dict | PipelineConfig | None) -> PipelineConfig:
    """Read a YAML file (or take a dict / a config) into a checked :class:`PipelineConfig`."""
    if isinstance(source, PipelineConfig):
        check_values(source)
        return source
    if source is None or isinstance(source, dict):
        return config_from_dict(source)
    import yaml

    path = Path(source).expanduser()
    if not path.is_file():
        raise SteerscopeError(f"config file {path} does not exist", "pass a YAML file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise SteerscopeError(f"config file {path} is not valid YAML{where}",
                              "fix the syntax") from None
    if isinstance(data, dict):  # relative paths mean files next to the config
        from steerscope.pipeline.config_paths import anchor_paths

        data = anchor_paths(data, path.parent)
    return config_from_dict(data)


def dump_config(cfg: PipelineConfig) -> str:
    """The config as YAML text (every key, in schema order)."""
    import yaml

    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


# --- value checks (no model, no files) ------------------------------------------------------
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def _fail(key: str, problem: str, fix: str) -> None:
    raise SteerscopeError(f"config key '{key}' {problem}", fix)


def _positive_int(key: str, value: int | None, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if value is None or value < 1:
        _fail(key, f"must be a positive integer, got {value!r}", f"set {key} to 1 or more")


def _finite(key: str, value: float) -> None:
    if not math.isfinite(value):
        _fail(key, f"must be a finite number, got {value!r}", f"fix {key}")


def _known(key: str, values: list[str], valid: tuple[str, ...] | list[str]) -> None:
    for v in values:
        if v not in valid:
            _fail(key, f"has unknown value '{v}'", f"use one of {', '.join(valid)}")
    if len(set(values)) != len(values):
        _fail(key, "lists a value twice", "list each value once")


def known_methods() -> list[str]:
    """Every steering-vector method the pipeline can make: dim, ntp, po and the registered
    extraction methods."""
    from steerscope.vectors.methods import METHODS

    return list(dict.fromkeys(["dim", *TRAINED_METHODS, *sorted(METHODS)]))


def _size_list(key: str, sizes: list[int] | None) -> None:
    """``sizes`` is None or a non-empty list of positive ints."""
    if sizes is not None and not sizes:
        _fail(key, "is empty", "list at least one size or drop the key")
    for x in sizes or []:
        _positive_int(key, x)


def check_values(cfg: PipelineConfig) -> None:
    """Range and name checks that need neither the model nor the data (one-line errors)."""
    if not _NAME.match(cfg.name):
        _fail("name", f"'{cfg.name}' is not a valid run name",
              "use letters, digits, '.', '_' and '-' only")
    if cfg.seed < 0:
        _fail("seed", f"must be non-negative, got {cfg.seed}", "pass e.g. 42")
    from steerscope.models.loading import resolve_dtype

    try:
        resolve_dtype(cfg.model.dtype)
    except SteerscopeError as exc:
        raise SteerscopeError(f"config key 'model.dtype': {exc}") from None
    if not cfg.model.source.strip():
        _fail("model.source", "is empty", "name a model: 'default', 'demo', a folder or a Hub id")
    if cfg.model.chat_template is not None:
        from steerscope.models.chat import resolve_chat_template

        try:
            resolve_chat_template(cfg.model.chat_template)
        except SteerscopeError as exc:
            raise SteerscopeError(f"config key 'model.chat_template': {exc}") from None
    d = cfg.data
    for key in ("n_train", "n_val", "n_test"):
        _positive_int(f"data.{key}", getattr(d, key))
    if d.seed is not None and d.seed < 0:
        _fail("data.seed", f"must be non-negative, got {d.seed}", "pass e.g. 42")
    for key in ("harmful_train", "harmless_train", "harmful_val", "harmless_val",
                "harmful_test", "harmless_test"):
        if not getattr(d, key).strip():
            _fail(f"data.{key}", "is empty", "name a prompt file or dataset")

    v = cfg.vectors
    _known("vectors.methods", v.methods, known_methods())
    if "dim" not in v.methods:
        _fail("vectors.methods", "must include 'dim'",
              "add dim: it selects the layer every method steers at")
    if v.layer is not None and v.layer < 0:
        _fail("vectors.layer", f"must be a non-negative layer index, got {v.layer}",
              "use a 0-indexed block number")
    _positive_int("vectors.batch_size", v.batch_size)
    if v.dim.layers is not None:
        if not v.dim.layers:
            _fail("vectors.dim.layers", "is empty", "list at least one layer or drop the key")
        for x in v.dim.layers:
            if x < 0:
                _fail("vectors.dim.layers", f"has a negative layer {x}", "use 0-indexed layers")
    if v.dim.positions is not None:
        if not v.dim.positions or any(p >= 0 for p in v.dim.positions):
            _fail("vectors.dim.positions", f"must be negative prompt positions, got "
                  f"{v.dim.positions}", "use e.g. [-1] (the last prompt token)")
    if v.position is not None and v.position >= 0:
        _fail("vectors.position", f"must be a negative prompt position, got {v.position}",
              "use e.g. -1 (the last prompt token)")
    if not 0 < v.dim.max_layer_fraction <= 1:
        _fail("vectors.dim.max_layer_fraction", f"must be in (0, 1], got "
              f"{v.dim.max_layer_fraction}", "use e.g. 0.8")
    from steerscope.vectors.dim_selection import LAYER_CUTOFFS

    _known("vectors.dim.layer_cutoff", [v.dim.layer_cutoff], LAYER_CUTOFFS)
    _finite("vectors.dim.kl_threshold", v.dim.kl_threshold)
    _finite("vectors.dim.induce_threshold", v.dim.induce_threshold)
    _positive_int("vectors.preference.n_prompts", v.preference.n_prompts, allow_none=True)
    _positive_int("vectors.preference.max_new_tokens", v.preference.max_new_tokens)
    _known("vectors.preference.val_prompts", [v.preference.val_prompts], VAL_PROMPTS)
    _known("vectors.preference.harmless_refuse", [v.preference.harmless_refuse],
           HARMLESS_REFUSE_SOURCES)
    if not 0 < v.preference.val_fraction < 1:
        _fail("vectors.preference.val_fraction", f"must be in (0, 1), got "
              f"{v.preference.val_fraction}", "use e.g. 0.2")
    for obj in TRAINED_METHODS:
        t: TrainSection = getattr(v, obj)
        key = f"vectors.{obj}"
        _known(f"{key}.preset", [t.preset], TRAIN_PRESETS)
        for name, allowed in (("lr_schedule", LR_SCHEDULES), ("validation", VALIDATIONS),
                              ("keep", KEEPS), ("ranking", RANKINGS)):
            if getattr(t, name) is not None:
                _known(f"{key}.{name}", [getattr(t, name)], allowed)
        for name in ("lr", "batch_size", "seed", "phi", "factors"):
            vals = getattr(t, name)
            if vals is not None and not vals:
                _fail(f"{key}.{name}", "is empty", "list at least one value or drop the key")
        for x in t.lr or []:
            if not (math.isfinite(x) and x > 0):
                _fail(f"{key}.lr", f"has a non-positive learning rate {x}", "use e.g. 0.04")
        for x in t.batch_size or []:
            _positive_int(f"{key}.batch_size", x)
        _positive_int(f"{key}.epochs", t.epochs, allow_none=True)
        _positive_int(f"{key}.max_response_tokens", t.max_response_tokens, allow_none=True)
    for m in v.extraction:
        if m not in v.methods or m == "dim" or m in TRAINED_METHODS:
            _fail(f"vectors.extraction.{m}", "names a method that is not an extraction method "
                  "in vectors.methods", "use the name of a listed method such as pca or probe")

    e = cfg.evaluation
    _positive_int("evaluation.max_new_tokens", e.max_new_tokens)
    _positive_int("evaluation.batch_size", e.batch_size)
    _finite("evaluation.bypass_alpha", e.bypass_alpha)
    _finite("evaluation.induce_alpha", e.induce_alpha)
    pa = cfg.patching
    if pa.methods is not None:
        if not pa.methods:
            _fail("patching.methods", "is empty", "list at least one method or drop the key")
        _known("patching.methods", pa.methods, v.methods)
    _positive_int("patching.n_prompts", pa.n_prompts)
    _positive_int("patching.ig_steps", pa.ig_steps)
    _positive_int("patching.max_new_tokens", pa.max_new_tokens)
    _positive_int("patching.batch_size", pa.batch_size)
    _positive_int("patching.top_n", pa.top_n)
    _known("patching.flip", [pa.flip], PATCHING_FLIPS)
    if pa.judge is not None:
        if not pa.judge.strip():
            _fail("patching.judge", "is empty", "name a judge (e.g. llamaguard) or drop the key")
        if pa.flip != "refusal":
            _fail("patching.judge", f"applies to patching.flip: refusal, not '{pa.flip}'",
                  "drop patching.judge or set patching.flip: refusal")
    _known("patching.metric", [pa.metric], PATCHING_METRICS)
    _known("patching.graph", [pa.graph], PATCHING_GRAPHS)
    _known("patching.grad_at", [pa.grad_at], GRAD_AT)
    _known("patching.logits_at", [pa.logits_at], LOGITS_AT)
    _known("patching.pooling", [pa.pooling], POOLING)
    if not (math.isfinite(pa.tau) and pa.tau >= 0):
        _fail("patching.tau", f"must be a finite number >= 0, got {pa.tau}", "use e.g. 0 or 1")
    if pa.tau and pa.metric != "kl":
        _fail("patching.tau", "applies to metric kl only", "drop it or set patching.metric: kl")
    if not 0 < cfg.circuits.threshold <= 1:
        _fail("circuits.threshold", f"must be in (0, 1], got {cfg.circuits.threshold}",
              "use e.g. 0.85")
    _size_list("circuits.sizes", cfg.circuits.sizes)
    c = cfg.circuits
    if c.grid_step is not None:
        if c.sizes is not None:
            _fail("circuits.grid_step", "and circuits.sizes are both set",
                  "keep one: a size grid or a list of sizes")
        if not 0 < c.grid_step <= 1:
            _fail("circuits.grid_step", f"must be a fraction in (0, 1], got {c.grid_step}",
                  "use e.g. 0.0341 (the paper's grid)")
    if not 0 < c.grid_max <= 1:
        _fail("circuits.grid_max", f"must be a fraction in (0, 1], got {c.grid_max}",
              "use e.g. 1.0")
    _known("circuits.random", [c.random], RANDOM_KINDS)
    _positive_int("circuits.n_random", cfg.circuits.n_random)
    if cfg.circuits.refine_steps < 0:
        _fail("circuits.refine_steps", f"must be >= 0, got {cfg.circuits.refine_steps}",
              "use e.g. 4")
    _size_list("circuits.overlap_sizes", cfg.circuits.overlap_sizes)
    _known("freeze.modes", cfg.freeze.modes, FREEZE_MODES)
    if cfg.freeze.enabled and (cfg.freeze.method not in v.methods
                               or cfg.freeze.method in TRAINED_METHODS):
        _fail("freeze.method", f"'{cfg.freeze.method}' is not an extracted vector of "
              "vectors.methods", "use dim or an extraction method listed in vectors.methods")
    _positive_int("freeze.n_prompts", cfg.freeze.n_prompts, allow_none=True)
    _positive_int("freeze.max_new_tokens", cfg.freeze.max_new_tokens)
    _positive_int("svv.top_tokens", cfg.svv.top_tokens)
    _positive_int("svv.n_heads", cfg.svv.n_heads)
    _known("sparsify.rules", cfg.sparsify.rules, SPARSIFY_RULES)
    for t in cfg.sparsify.taus:
        if not (math.isfinite(t) and t >= 0):
            _fail("sparsify.taus", f"has a negative or non-finite threshold {t}",
                  "use values >= 0")
    _positive_int("sparsify.n_prompts", cfg.sparsify.n_prompts, allow_none=True)
    _positive_int("sparsify.max_new_tokens", cfg.sparsify.max_new_tokens, allow_none=True)
    if not cfg.sparsify.taus:
        _fail("sparsify.taus", "is empty", "list at least one threshold, e.g. [0, 1]")
    if not cfg.sparsify.rules:
        _fail("sparsify.rules", "is empty", "list at least one rule, e.g. [grad, ie]")
