"""Device mesh and sharding rules: logical axis names -> mesh axes `data`, `fsdp`, `tensor`.

Parameters carry logical axis names (`embed`, `mlp`, `heads`, `kv`, `vocab`, `layers`, ...);
activations are constrained with (`batch`, `length`, `embed`). A rules table maps each logical
name to mesh axes, so changing the parallelism is a config change:

    mesh = make_mesh(dict(data=-1, fsdp=1, tensor=1))
    rules = validate_rules(config.sharding_rules)
    shardings = state_shardings(abstract_state, mesh, rules)     # NamedSharding per parameter
    with jax.set_mesh(mesh), axis_rules(rules):
        step = jax.jit(train_step, in_shardings=(shardings, batch_sharding(mesh, rules)), ...)

Rules resolve in order: a mesh axis is used at most once per array (the first logical axis that
asks for it gets it), and a dimension the mesh axes do not divide stays replicated.
This module imports nothing else from fourm_jax; the model uses `constrain` from here, so it
depends on no trainer code.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import jax
from flax import nnx
from flax.core import spmd
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# logical name -> mesh axes (None = replicated). FSDP shards parameters over `fsdp` along their
# model dimension; tensor parallelism splits heads, MLP hidden units and vocabularies.
DEFAULT_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("vocab", "tensor"),
    ("layers", None),
    ("norm", None),
    ("patch", None),
)

Rules = tuple[tuple[str, tuple[str, ...]], ...]


def make_mesh(shape: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh with axes (data, fsdp, tensor); one size may be -1 (the remaining devices)."""
    unknown = sorted(set(shape) - set(MESH_AXES))
    if unknown:
        raise ValueError(f"mesh: unknown axis {', '.join(unknown)}; axes are {MESH_AXES}")
    devices = list(jax.devices() if devices is None else devices)
    sizes = [int(shape.get(axis, 1)) for axis in MESH_AXES]
    if sizes.count(-1) > 1:
        raise ValueError(f"mesh {dict(shape)}: at most one axis may be -1")
    for axis, size in zip(MESH_AXES, sizes, strict=True):
        if size == 0 or size < -1:
            raise ValueError(f"mesh.{axis}: size must be positive or -1, got {size}")
    fixed = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if len(devices) % fixed:
            raise ValueError(f"mesh {dict(shape)}: {len(devices)} devices are not divisible by {fixed}")
        sizes[sizes.index(-1)] = len(devices) // fixed
    if math.prod(sizes) != len(devices):
        raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes, strict=True))} needs {math.prod(sizes)} "
                         f"devices, have {len(devices)}")
    return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES),
                         devices=devices)


def validate_rules(rules) -> Rules:
    """Normalises a rules table (sequence of (logical name, mesh axes or None)); errors name the entry."""
    out = []
    seen = set()
    for i, entry in enumerate(rules):
        if len(entry) != 2 or not isinstance(entry[0], str):
            raise ValueError(f"sharding_rules[{i}]: expected (logical name, mesh axes), got {entry!r}")
        name, axes = entry
        if name in seen:
            raise ValueError(f"sharding_rules[{i}]: logical axis {name!r} appears twice")
        seen.add(name)
        axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
        for axis in axes:
            if axis not in MESH_AXES:
                raise ValueError(f"sharding_rules[{i}] ({name!r}): unknown mesh axis {axis!r}; "
                                 f"axes are {MESH_AXES}")
        out.append((name, axes))
    return tuple(out)


def axis_rules(rules):
    """Context in which `constrain` (and nnx.get_partition_spec) resolve logical names with `rules`."""
    return spmd.logical_axis_rules(validate_rules(rules))


def current_rules() -> Rules:
    return validate_rules(spmd.get_logical_axis_rules())


def logical_to_spec(logical_axes: Sequence[str | None], rules: Rules, shape: Sequence[int] | None = None,
                    mesh_shape: Mapping[str, int] | None = None) -> PartitionSpec:
    """PartitionSpec for one array. With `shape` and `mesh_shape`, mesh axes that do not divide the
    dimension are dropped (it stays replicated along them)."""
    table = dict(rules)
    used: set[str] = set()
    spec = []
    for dim, name in enumerate(logical_axes):
        axes = [a for a in table.get(name, ()) if a not in used] if name is not None else []
        if shape is not None and mesh_shape is not None:
            kept = []
            for axis in axes:
                if shape[dim] % (math.prod(mesh_shape[a] for a in kept) * mesh_shape[axis]) == 0:
                    kept.append(axis)
            axes = kept
        used.update(axes)
        spec.append(None if not axes else axes[0] if len(axes) == 1 else tuple(axes))
    return PartitionSpec(*spec)


def dim_axes(spec: PartitionSpec, dim: int) -> tuple[str, ...]:
    """The mesh axes that `spec` splits dimension `dim` over (empty: replicated)."""
    entry = spec[dim] if dim < len(spec) else None
    if entry is None:
        return ()
    return entry if isinstance(entry, tuple) else (entry,)


def _variable_axes(variable: nnx.Variable) -> tuple[str | None, ...]:
    axes = variable.get_metadata().get("out_sharding") or ()
    return tuple(axes) + (None,) * (len(variable.shape) - len(axes))


def state_shardings(state, mesh: Mesh, rules) -> nnx.State:
    """A NamedSharding for every variable of an nnx.State (abstract or concrete), from its logical axes."""
    rules = validate_rules(rules)
    mesh_shape = dict(mesh.shape)

    def sharding(variable):
        spec = logical_to_spec(_variable_axes(variable), rules, variable.shape, mesh_shape)
        return variable.replace(NamedSharding(mesh, spec))

    return jax.tree.map(sharding, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def batch_sharding(mesh: Mesh, rules) -> NamedSharding:
    """Sharding of batch arrays: the leading axis over the mesh axes of `batch`."""
    return NamedSharding(mesh, logical_to_spec(("batch",), validate_rules(rules)))


def batch_mesh_axes(rules: Rules | None = None) -> tuple[str, ...]:
    """The mesh axes of the current mesh that the batch is split over (size > 1 only)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return ()
    axes = dict(current_rules() if rules is None else rules).get("batch", ())
    return tuple(a for a in axes if a in mesh.axis_names and mesh.shape[a] > 1)


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
    """Sharding constraint on an activation from logical names; a no-op without a mesh or rules."""
    mesh = jax.sharding.get_abstract_mesh()
    rules = current_rules()
    if mesh.empty or not rules:
        return x
    spec = logical_to_spec(logical_axes, rules, x.shape, dict(mesh.shape))
    return jax.lax.with_sharding_constraint(x, spec)


def describe(state, mesh: Mesh, rules) -> dict[str, str]:
    """'path': 'PartitionSpec' for every variable: a readable dump of how a state is laid out."""
    shardings = state_shardings(state, mesh, rules)
    flat = nnx.to_flat_state(shardings)
    return {"/".join(map(str, path)): str(v.get_value().spec) for path, v in flat}

