"""Training loop of a tokenizer spec (tools/train_tokenizer.py), on the main model's machinery.

    run = trainer.train(spec, workdir)            # resumes from workdir's latest checkpoint
    run.variables["ema"], run.metrics["ema"]      # the EMA variables and their held-out quality

Pieces: the images of the spec's dataset field held in memory (`ImageField`); batches that are a
pure function of (seed, step): epoch permutations, ml-4m's random resized crops (scale
[min_crop_scale, 1]) and flips, normalised on the device; a mesh from fourm_jax.sharding with the
batch split over its batch axes and the (small) state replicated; AdamW with warmup + cosine from
fourm_jax.train.optimizer; the step of fourm_jax.tokenizers.train; metrics through
fourm_jax.train.metrics (TensorBoard + metrics.jsonl + a progress line); held-out quality
(`make_eval_step` + `metrics.summarize`) of the live and the EMA variables. Since the batch and the
step's randomness depend only on the step, restoring the state is all an exact resume needs.

Checkpoints: an Orbax CheckpointManager under `<workdir>/checkpoints` with two items, `state` (the
TrainState) and `spec` (the spec as JSON), in `TokenizerCheckpoints`. The main trainer's checkpoint
manager (fourm_jax/train/checkpoint.py) is being written in parallel; once it lands, this class is
the one place to switch.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from fourm_jax import sharding
from fourm_jax.data import records, sources, transforms
from fourm_jax.data.errors import DataError
from fourm_jax.tokenizers import inputs, metrics
from fourm_jax.tokenizers import train as core
from fourm_jax.tokenizers.specs import Spec
from fourm_jax.tokenizers.vqvae import VQVAE
from fourm_jax.train import metrics as train_metrics
from fourm_jax.train import optimizer as optimizers

STATE_ITEM = "state"
SPEC_ITEM = "spec"


# ----------------------------------------------------------------------------- data

def open_split(spec: Spec, split: str):
    """The random-access source of one split of the spec's dataset."""
    c = spec.config
    if c.format == "image_folder":
        root = pathlib.Path(c.dataset)
        return sources.ImageFolderSource(root / split if (root / split).is_dir() else root, [c.field])
    return records.open_dataset(c.dataset, split, data_dir=c.data_dir)


class ImageField:
    """The raw values of one image-like field of a split, held in memory `[N, H, W(, C)]`.

    Raw means as stored: uint8 RGB / normals `[H, W, 3]`, depth `[H, W]` (float, or uint16 PNG
    values), uint8 class ids `[H, W]`. Every record must have the same size; the first that does
    not is an error naming its file and index.
    """

    def __init__(self, source, field: str, modality: str, limit: int | None = None):
        self.field, self.modality = field, modality
        count = len(source) if limit is None else min(limit, len(source))
        if count == 0:
            raise DataError("the split holds no records", field=field)
        values = []
        for index in range(count):
            record = source[index]
            if field not in record:
                present = sorted(k for k in record if not k.startswith("_"))
                raise DataError(f"missing; the record has {present}", file=record.get(records.FILE_KEY),
                                index=record.get(records.INDEX_KEY), field=field)
            value = np.asarray(record[field])
            if modality == "semseg" and value.ndim == 3 and value.shape[-1] == 1:
                value = value[..., 0]
            if values and value.shape != values[0].shape:
                raise DataError(f"size {value.shape} differs from the first record's {values[0].shape}",
                                file=record.get(records.FILE_KEY), index=record.get(records.INDEX_KEY),
                                field=field)
            values.append(value)
        self.values = np.stack(values)

    def __len__(self) -> int:
        return len(self.values)

    def crops(self, indices: np.ndarray, settings: np.ndarray, size: int) -> np.ndarray:
        """Raw crops `[len(indices), size, size(, C)]`, one settings row (top, left, h, w, flip) each."""
        return np.stack([transforms.crop_image(self.modality, self.values[i], row, size, self.field)
                         for i, row in zip(indices, settings, strict=True)])

    def centre_crops(self, indices: np.ndarray, size: int) -> np.ndarray:
        row = transforms.full_image_crop(*self.values.shape[1:3])
        return self.crops(indices, np.repeat(row[None], len(indices), 0), size)


def training_batch(images: ImageField, step: int, batch_size: int, image_size: int, *, seed: int,
                   min_crop_scale: float, hflip: float) -> np.ndarray:
    """The raw batch of a step: examples in epoch order (a fresh permutation per epoch), each
    a random resized crop, flipped with probability `hflip`. A pure function of its arguments."""
    n = len(images)
    positions = step * batch_size + np.arange(batch_size)
    epochs = positions // n
    indices = np.empty(batch_size, np.int64)
    for epoch in np.unique(epochs):
        permutation = np.random.default_rng([seed, 0, int(epoch)]).permutation(n)
        chosen = epochs == epoch
        indices[chosen] = permutation[positions[chosen] % n]
    rng = np.random.default_rng([seed, 1, step])
    height, width = images.values.shape[1:3]
    settings = np.array([(*transforms.random_resized_crop(rng, height, width, (min_crop_scale, 1.0)),
                          int(rng.random() < hflip)) for _ in range(batch_size)])
    return images.crops(indices, settings, image_size)


# ----------------------------------------------------------------------------- checkpoints

class TokenizerCheckpoints:
    """Orbax CheckpointManager of a tokenizer run: `state` (TrainState) and `spec` (JSON) per step."""

    def __init__(self, directory: pathlib.Path, keep: int):
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
        self.manager = ocp.CheckpointManager(directory.absolute(), options=options,
                                             item_names=(STATE_ITEM, SPEC_ITEM))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: core.TrainState, spec_json: dict) -> None:
        # Tokenizer states are small: fetch them to the host once (one copy of each replicated
        # array) and let Orbax write in the background.
        self.manager.save(step, args=ocp.args.Composite(**{
            STATE_ITEM: ocp.args.StandardSave(jax.device_get(state)),
            SPEC_ITEM: ocp.args.JsonSave(spec_json)}))

    def restore_spec(self, step: int) -> dict:
        args = ocp.args.Composite(**{SPEC_ITEM: ocp.args.JsonRestore()})
        return self.manager.restore(step, args=args)[SPEC_ITEM]

    def restore(self, step: int, target: core.TrainState) -> core.TrainState:
        """The state at `step`, laid out like `target` (shapes, dtypes, shardings)."""
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        return self.manager.restore(step, args=ocp.args.Composite(**{
            STATE_ITEM: ocp.args.StandardRestore(abstract)}))[STATE_ITEM]

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


# ----------------------------------------------------------------------------- the run

@dataclasses.dataclass
class Run:
    """A finished (or stopped) run: the tokenizer, its variables by kind (`live`, and `ema` when
    the recipe keeps a model EMA), the last held-out metrics of each kind (over `held_out_examples`
    images), and the step reached."""

    tokenizer: VQVAE
    variables: dict[str, dict]
    metrics: dict[str, dict[str, float]]
    step: int
    held_out_examples: int = 0

    @property
    def default_kind(self) -> str:
        """What to export unless told otherwise: the EMA copy when there is one (ml-4m's practice)."""
        return "ema" if "ema" in self.variables else "live"


def spec_json(spec: Spec) -> dict:
    return json.loads(spec.config.to_json())


def make_mesh() -> Mesh:
    """Every device on the `data` axis: tokenizers are small, so the state is replicated."""
    return sharding.make_mesh(dict(data=-1))


def evaluate(eval_step: Callable, variables: dict, images: ImageField, count: int, batch_size: int,
             image_size: int, batch: NamedSharding) -> dict[str, float]:
    """Held-out metrics of centre crops of the first `count` images (the last batch padded by
    repeating its first image; padded rows are dropped from the statistics)."""
    devices = batch.mesh.size
    batch_size = -(-batch_size // devices) * devices
    total = None
    for start in range(0, min(count, len(images)), batch_size):
        indices = np.arange(start, min(start + batch_size, count, len(images)))
        valid = len(indices)
        padded = np.concatenate([indices, np.full(batch_size - valid, indices[0])])
        raw = jax.device_put(images.centre_crops(padded, image_size), batch)
        stats = eval_step(variables, raw, np.arange(batch_size) < valid)
        total = stats if total is None else metrics.add_stats(total, stats)
    return metrics.summarize(jax.device_get(total))


def _eval_fn(tokenizer: VQVAE, modality: str) -> Callable:
    """eval_step over raw values with a row mask (padded rows count for nothing)."""
    eval_step = core.make_eval_step(tokenizer)

    def run(variables, raw, valid):
        x = inputs.normalize(modality, raw)
        per_row = jax.vmap(lambda xi, ri: eval_step(variables, xi[None], ri[None]))(x, raw)
        return jax.tree.map(lambda s: jnp.tensordot(valid.astype(s.dtype), s, axes=1), per_row)

    return run


@dataclasses.dataclass(frozen=True)
class Programs:
    """The compiled pieces of a run: `init(rng) -> state`, `step(state, raw, rng) -> (state,
    metrics)` (the state donated), `eval_step(variables, raw, valid) -> stats`, the schedule."""

    init: Callable
    step: Callable
    eval_step: Callable
    schedule: Callable


@functools.lru_cache(maxsize=8)
def programs(tokenizer: VQVAE, loss: core.LossConfig, optimizer_settings: tuple, batch_size: int,
             mesh: Mesh) -> Programs:
    """Jitted programs of a run, cached: later runs of the same setup in this process (a resumed
    run, an evaluation) reuse their compilations."""
    modality = tokenizer.config.modality
    settings = dict(optimizer_settings)
    total_steps, warmup_steps = settings.pop("total_steps"), settings.pop("warmup_steps")
    optimizer, schedule = optimizers.make_optimizer(settings, global_batch=batch_size,
                                                    total_steps=total_steps, warmup_steps=warmup_steps)
    replicated = NamedSharding(mesh, PartitionSpec())
    batch = sharding.batch_sharding(mesh, sharding.DEFAULT_RULES)
    step_fn = core.make_train_step(tokenizer, optimizer, loss)

    def raw_step(state, raw, rng):
        return step_fn(state, inputs.normalize(modality, raw), rng)

    def on_mesh(fn):
        def call(*args):
            with jax.set_mesh(mesh):
                return fn(*args)
        return call

    return Programs(
        init=on_mesh(jax.jit(lambda rng: core.init_train_state(tokenizer, optimizer, rng, loss),
                             out_shardings=replicated)),
        step=on_mesh(jax.jit(raw_step, in_shardings=(replicated, batch, replicated),
                             out_shardings=(replicated, replicated), donate_argnums=0)),
        eval_step=on_mesh(jax.jit(_eval_fn(tokenizer, modality), in_shardings=(replicated, batch, batch),
                                  out_shardings=replicated)),
        schedule=schedule)


def train(spec: Spec, workdir: str | pathlib.Path, *, mesh: Mesh | None = None,
          log: Callable[[str], None] = print, stop_after: int | None = None) -> Run:
    """Trains (or resumes) the spec's tokenizer in `workdir`; returns the run at its last step.

    `stop_after` ends the run early at that step (after its checkpoint), as an interruption would.
    """
    workdir = pathlib.Path(workdir)
    c, t = spec.config, spec.config.train
    mesh = mesh or make_mesh()
    batch = sharding.batch_sharding(mesh, sharding.DEFAULT_RULES)
    if t.batch_size % mesh.size:
        raise ValueError(f"train.batch_size {t.batch_size} is not a multiple of the {mesh.size} devices")
    modality = spec.tokenizer.modality
    config = core.with_dead_code_threshold(spec.tokenizer, t.batch_size, c.image_size, t.coef_ema_dead_code)
    tokenizer = VQVAE(config)
    optimizer_settings = (("base_lr", t.base_lr), ("min_base_lr", t.min_base_lr),
                          ("warmup_steps", t.warmup_steps), ("total_steps", t.steps),
                          ("weight_decay", t.weight_decay), ("b1", t.b1), ("b2", t.b2),
                          ("clip_grad", t.clip_grad))
    checkpoints = TokenizerCheckpoints(workdir / "checkpoints", t.keep_checkpoints)
    start = checkpoints.latest_step() or 0
    if start and checkpoints.restore_spec(start) != spec_json(spec):
        checkpoints.close()
        raise ValueError(f"{workdir}: its checkpoints were trained with another spec; use a new "
                         "workdir (or the same spec and overrides) to resume")
    compiled = programs(tokenizer, spec.loss, optimizer_settings, t.batch_size, mesh)

    images = ImageField(open_split(spec, c.train_split), c.field, modality)
    held_out = (ImageField(open_split(spec, c.eval_split), c.field, modality, limit=t.eval_examples)
                if c.eval_split else None)
    log(f"{c.dataset}:{c.field}: {len(images)} training images {images.values.shape[1:]}"
        + (f", {len(held_out)} held out" if held_out else ""))
    state = compiled.init(jax.random.key(t.seed))

    if start:
        state = checkpoints.restore(start, state)
        log(f"resumed from step {start}")
    writer = train_metrics.MetricWriter(workdir, resume_step=start if start else None)
    progress = train_metrics.Progress(t.steps, start)
    rng = jax.random.key(t.seed)
    run_metrics: dict[str, dict[str, float]] = {}

    def variables_by_kind() -> dict[str, dict]:
        kinds = {"live": state.variables}
        if state.ema_variables is not None:
            kinds["ema"] = state.ema_variables
        return kinds

    def held_out_metrics(step: int) -> dict[str, dict[str, float]]:
        """Metrics of the live variables (logged as `eval/...`) and of the EMA copy (`eval_ema/...`)."""
        found = {}
        for kind, variables in variables_by_kind().items():
            found[kind] = evaluate(compiled.eval_step, variables, held_out, t.eval_examples,
                                   t.eval_batch_size, c.image_size, batch)
            prefix = "eval" if kind == "live" else f"eval_{kind}"
            writer.write(step, {f"{prefix}/{k}": v for k, v in found[kind].items()})
            log(f"step {step} {prefix}: " + " ".join(f"{k}={v:.4g}" for k, v in found[kind].items()))
        return found

    end = t.steps if stop_after is None else min(stop_after, t.steps)
    began = time.perf_counter()
    try:
        for step in range(start, end):
            raw = training_batch(images, step, t.batch_size, c.image_size, seed=t.seed,
                                 min_crop_scale=t.min_crop_scale, hflip=t.hflip)
            state, step_metrics = compiled.step(state, jax.device_put(raw, batch), rng)
            done = step + 1
            if done % t.log_every == 0 or done == t.steps:
                values = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
                values["lr"] = float(compiled.schedule(step))
                writer.write(done, values)
                log(progress.line(done, values["loss"], t.batch_size * int(np.prod(config.token_grid(
                    c.image_size, c.image_size)))))
            if held_out is not None and (done % t.eval_every == 0 or done == t.steps):
                run_metrics = held_out_metrics(done)
            if done % t.checkpoint_every == 0 or done == t.steps or done == end:
                checkpoints.save(done, state, spec_json(spec))
        if held_out is not None and not run_metrics:
            run_metrics = held_out_metrics(max(end, start))
    finally:
        checkpoints.close()
        writer.close()
    log(f"trained steps {start}..{end} in {time.perf_counter() - began:.0f} s")
    return Run(tokenizer=tokenizer, variables=jax.device_get(variables_by_kind()), metrics=run_metrics,
               step=max(end, start), held_out_examples=len(held_out) if held_out is not None else 0)
