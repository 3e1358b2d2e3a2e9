"""A training run's configuration: every field checked, with derived quantities, before anything is built.

A run config (configs/*.py, `get_config()`) is an ml_collections ConfigDict with these sections:

    name            run name (metrics, logs)
    model           ModelConfig fields (fourm_jax/model/config.py)
    mesh            {data, fsdp, tensor}: mesh axis sizes, one may be -1 (the remaining devices)
    sharding_rules  [(logical axis, mesh axes)] (fourm_jax/sharding.py)
    data            the training input: PipelineConfig fields (fourm_jax/data/pipeline.py);
                    data.global_batch_size is the optimizer batch over all processes
    eval            EvalConfig fields; eval.data: a PipelineConfig for the held-out split, or None
    train           TrainConfig fields
    optimizer       OptimizerConfig fields (fourm_jax/train/optimizer.py)

`RunConfig.from_config` rejects unknown fields and invalid values with an error naming the field
(`train.accum_steps: ...`), and checks that the sections agree (masking budgets fit the model's
token budgets, every output modality of the model is in the batch, the batch splits into micro
batches).
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
from collections.abc import Mapping
from typing import Any

import ml_collections

from fourm_jax import modalities, sharding
from fourm_jax.configs import ConfigError, reject_unknown_fields
from fourm_jax.data import pipeline
from fourm_jax.model.config import ModelConfig
from fourm_jax.train.optimizer import OptimizerConfig

SECTIONS = ("name", "model", "mesh", "sharding_rules", "data", "eval", "train", "optimizer")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The training loop.

    Token budgets: the model sees num_input_tokens encoder and num_target_tokens decoder tokens per
    example (ml-4m's num_input_tokens / num_target_tokens). Length: total_steps, or (when 0)
    total_tokens in billions of nominal input + target tokens (ml-4m's `total_tokens`); warmup:
    warmup_steps, or (when -1) warmup_tokens in billions. accum_steps: micro-batches per step
    (gradient accumulation; the global batch is the optimizer batch). seed: parameter init.
    Every log_every steps metrics are written; a checkpoint every checkpoint_every steps (and at
    the end and on SIGTERM), keeping the last keep_checkpoints. init_from: a fourm_jax params
    checkpoint (tools/convert_checkpoint.py output, a run's step directory, run root or workdir)
    to start a fresh run from; parameters whose ml-4m key contains one of init_drop (e.g.
    '.pos_emb', as ml-4m's --finetune) or that the checkpoint lacks keep their fresh init, and the
    optimizer starts fresh.
    """

    num_input_tokens: int = 128
    num_target_tokens: int = 128
    total_steps: int = 0
    total_tokens: float = 0.0
    warmup_steps: int = -1
    warmup_tokens: float = 0.0
    accum_steps: int = 1
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    async_checkpoints: bool = True
    init_from: str = ""
    init_drop: tuple[str, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "init_drop", tuple(self.init_drop))
        for field in ("num_input_tokens", "num_target_tokens", "accum_steps", "log_every",
                      "checkpoint_every", "keep_checkpoints"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                _fail(field, f"must be a positive integer, got {value!r}")
        if not isinstance(self.total_steps, int) or self.total_steps < 0:
            _fail("total_steps", f"must be a non-negative integer, got {self.total_steps!r}")
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < -1:
            _fail("warmup_steps", f"must be -1 (from warmup_tokens) or >= 0, got {self.warmup_steps!r}")
        for field in ("total_tokens", "warmup_tokens"):
            if not getattr(self, field) >= 0:
                _fail(field, f"must be >= 0 (billions of tokens), got {getattr(self, field)!r}")
        if self.total_steps == 0 and self.total_tokens == 0:
            _fail("total_steps", "set total_steps or total_tokens (billions)")
        if not all(isinstance(p, str) and p for p in self.init_drop):
            _fail("init_drop", f"must be non-empty strings, got {self.init_drop!r}")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Held-out evaluation every every_steps steps (0: never) on num_batches batches of `data`,
    with its own token budgets (ml-4m's fixed eval: 128 / 128 for every model). The evaluation
    stream restarts from its beginning each time, so every evaluation sees the same examples and
    masks."""

    every_steps: int = 0
    num_batches: int = 1
    num_input_tokens: int = 128
    num_target_tokens: int = 128
    data: pipeline.PipelineConfig | None = None

    def __post_init__(self):
        if not isinstance(self.every_steps, int) or self.every_steps < 0:
            raise ConfigError(f"eval.every_steps: must be >= 0, got {self.every_steps!r}")
        for field in ("num_batches", "num_input_tokens", "num_target_tokens"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"eval.{field}: must be a positive integer, got {value!r}")
        if self.every_steps and self.data is None:
            raise ConfigError("eval.data: evaluation every "
                              f"{self.every_steps} steps needs a held-out data config")


def _fail(field: str, message: str):
    raise ConfigError(f"train.{field}: {message}")


def _values(section: Any, name: str) -> dict[str, Any]:
    if isinstance(section, ml_collections.ConfigDict):
        return section.to_dict()
    if isinstance(section, Mapping):
        return dict(section)
    raise ConfigError(f"{name}: expected a ConfigDict, got {type(section).__name__}")


def _dataclass_from(cls, values: dict[str, Any], name: str):
    reject_unknown_fields(cls, values, name)
    return cls(**values)


def _pipeline(section: Any, name: str) -> pipeline.PipelineConfig:
    try:
        return pipeline.PipelineConfig.from_config(_values(section, name))
    except (ValueError, KeyError, FileNotFoundError, AttributeError) as error:
        raise ConfigError(f"{name}: {error}") from None


def _check_budgets(data: pipeline.PipelineConfig, name: str, num_input: int, num_target: int,
                   budget_names: tuple[str, str]) -> None:
    """Masking must not give more tokens than the model keeps (they would be dropped silently)."""
    for dataset in data.datasets:
        masking = dataset.masking
        if not isinstance(masking, Mapping | ml_collections.ConfigDict):
            continue
        for key, budget, budget_name in (("input_tokens", num_input, budget_names[0]),
                                         ("target_tokens", num_target, budget_names[1])):
            value = masking.get(key, None)
            if value is not None and value > budget:
                raise ConfigError(f"{name}.datasets.{dataset.name}.masking.{key}={value} exceeds "
                                  f"{budget_name}={budget}: the model would drop tokens")


def _check_text_tokenizer(data: pipeline.PipelineConfig, name: str) -> None:
    sequences = [m for m in pipeline.output_modalities(data)
                 if modalities.get(m).kind is modalities.Kind.SEQUENCE]
    if not sequences:
        return
    if not data.text_tokenizer:
        raise ConfigError(f"{name}.text_tokenizer: the sequence modalities {sequences} need a text "
                          "vocabulary (a WordPiece .json or SentencePiece .model path)")
    path = data.text_tokenizer
    if isinstance(path, str | pathlib.Path) and not pathlib.Path(path).is_file():
        raise ConfigError(f"{name}.text_tokenizer: {data.text_tokenizer} does not exist")


def _check_modalities(data: pipeline.PipelineConfig, name: str, model: ModelConfig) -> None:
    provided = set(pipeline.output_modalities(data))
    missing = [m for m in model.domains_out if m not in provided]
    if missing:
        raise ConfigError(f"{name}: the batch lacks the model's output modalities {missing} "
                          f"(it holds {sorted(provided)}); list them in {name}.modalities to feed "
                          "them fully masked")
    if not provided & set(model.domains_in):
        raise ConfigError(f"{name}: no modality of the batch {sorted(provided)} is a model input "
                          f"({list(model.domains_in)})")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """A validated run config (see the module docstring); `raw` is the ConfigDict it came from."""

    name: str
    model: ModelConfig
    mesh: Mapping[str, int]
    sharding_rules: sharding.Rules
    data: pipeline.PipelineConfig
    eval: EvalConfig
    train: TrainConfig
    optimizer: OptimizerConfig
    raw: ml_collections.ConfigDict

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> RunConfig:
        unknown = sorted(set(config.keys()) - set(SECTIONS))
        if unknown:
            raise ConfigError(f"unknown top-level field(s) {unknown}; known: {list(SECTIONS)}")
        missing = [s for s in ("model", "data", "train") if s not in config]
        if missing:
            raise ConfigError(f"the run config has no {', '.join(missing)} section")
        model = ModelConfig.from_config(config.model)
        mesh = _values(config.get("mesh", {}), "mesh")
        bad_axes = sorted(set(mesh) - set(sharding.MESH_AXES))
        if bad_axes:
            raise ConfigError(f"mesh: unknown axis {bad_axes}; axes are {sharding.MESH_AXES}")
        for axis, size in mesh.items():
            if not isinstance(size, int) or not (size == -1 or size > 0):
                raise ConfigError(f"mesh.{axis}: must be a positive integer or -1, got {size!r}")
        try:
            rules = sharding.validate_rules(config.get("sharding_rules", sharding.DEFAULT_RULES))
        except ValueError as error:
            raise ConfigError(str(error)) from None
        train = _dataclass_from(TrainConfig, _values(config.train, "train"), "train")
        optimizer_values = _values(config.get("optimizer", {}), "optimizer")
        try:
            optimizer = OptimizerConfig.from_config(optimizer_values)
        except ValueError as error:
            raise ConfigError(str(error)) from None
        data = _pipeline(config.data, "data")
        eval_values = _values(config.get("eval", {}), "eval")
        eval_data = eval_values.pop("data", None)
        eval_config = _dataclass_from(EvalConfig, dict(
            eval_values, data=None if eval_data is None else _pipeline(eval_data, "eval.data")), "eval")
        if data.global_batch_size % train.accum_steps:
            raise ConfigError(f"data.global_batch_size={data.global_batch_size} is not divisible by "
                              f"train.accum_steps={train.accum_steps}")
        _check_budgets(data, "data", train.num_input_tokens, train.num_target_tokens,
                       ("train.num_input_tokens", "train.num_target_tokens"))
        _check_modalities(data, "data", model)
        _check_text_tokenizer(data, "data")
        if eval_config.data is not None:
            _check_budgets(eval_config.data, "eval.data", eval_config.num_input_tokens,
                           eval_config.num_target_tokens, ("eval.num_input_tokens", "eval.num_target_tokens"))
            _check_modalities(eval_config.data, "eval.data", model)
            _check_text_tokenizer(eval_config.data, "eval.data")
        if train.init_from and not pathlib.Path(train.init_from).exists():
            raise ConfigError(f"train.init_from: {train.init_from} does not exist")
        run = cls(name=str(config.get("name", "run")), model=model, mesh=mesh, sharding_rules=rules,
                  data=data, eval=eval_config, train=train, optimizer=optimizer, raw=config)
        if run.warmup_steps > run.total_steps:
            raise ConfigError(f"train: warmup ({run.warmup_steps} steps) is longer than the run "
                              f"({run.total_steps} steps)")
        return run

    @property
    def global_batch(self) -> int:
        return self.data.global_batch_size

    @property
    def tokens_per_step(self) -> int:
        """Nominal tokens per optimizer step (ml-4m's count: the budgets, not the realised tokens)."""
        return self.global_batch * (self.train.num_input_tokens + self.train.num_target_tokens)

    @property
    def total_steps(self) -> int:
        if self.train.total_steps:
            return self.train.total_steps
        return math.ceil(self.train.total_tokens * 1e9 / self.tokens_per_step)

    @property
    def warmup_steps(self) -> int:
        if self.train.warmup_steps >= 0:
            return self.train.warmup_steps
        return math.ceil(self.train.warmup_tokens * 1e9 / self.tokens_per_step)

    def to_json(self) -> dict[str, Any]:
        """The raw config as JSON (what the checkpoint and the workdir keep)."""
        return json.loads(self.raw.to_json_best_effort())


def _field_defaults(cls, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    out = {}
    for field in dataclasses.fields(cls):
        if field.name in skip:
            continue
        value = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
        out[field.name] = list(value) if isinstance(value, tuple) else value
    return out


def defaults() -> ml_collections.ConfigDict:
    """A run config with every field present at its default, so any field can be overridden from
    the command line; recipes start here and fill in model, data.datasets and the lengths."""
    config = ml_collections.ConfigDict()
    config.name = "run"
    config.model = ModelConfig().to_config()
    config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    config.sharding_rules = [(name, axes) for name, axes in sharding.DEFAULT_RULES]
    config.data = ml_collections.ConfigDict(dict(
        _field_defaults(pipeline.PipelineConfig, skip=("datasets", "modalities")),
        global_batch_size=256, modalities=(), datasets={}))
    config.eval = ml_collections.ConfigDict(_field_defaults(EvalConfig, skip=("data",)))
    config.eval.data = None
    config.train = ml_collections.ConfigDict(_field_defaults(TrainConfig))
    config.optimizer = ml_collections.ConfigDict(_field_defaults(OptimizerConfig))
    return config
