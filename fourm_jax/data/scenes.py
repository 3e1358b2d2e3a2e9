"""Procedural 3-D scenes, ray-cast analytically in numpy: the built-in `scenes` dataset's renderer.

A scene is 1-6 primitives (sphere, cube, cylinder, cone) with a colour, a material (matte rubber or
shiny metal) and a size, standing on a ground plane, seen by a random camera under a random
directional light. One primary ray per pixel (no anti-aliasing), intersected with every primitive
in closed form over all pixels at once, gives pixel-exact RGB (Blinn-Phong shading with hard
shadows), depth (camera-space z), surface normals (camera frame), semantic and instance labels.
Boxes, the caption (objects, colours, spatial relations) and the metadata are derived from the
scene graph and the labels. Everything is a pure function of (seed, index).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

SHAPES = ("sphere", "cube", "cylinder", "cone")
CLASS_NAMES = ("background", "floor") + SHAPES  # semantic segmentation ids 0..5
COLORS = {  # sRGB albedo
    "gray": (128, 128, 128), "red": (190, 40, 35), "blue": (40, 80, 215), "green": (40, 150, 60),
    "brown": (130, 80, 40), "purple": (130, 50, 190), "cyan": (50, 200, 200),
    "yellow": (235, 215, 50),
}
MATERIALS = ("rubber", "metal")
SIZES = {"small": 0.4, "large": 0.7}
MAX_OBJECTS = 6
FIELD_OF_VIEW_DEG = 40.0
ARENA = 2.4  # objects stand in [-ARENA, ARENA]^2 on the floor
_EPS = 1e-4
_NUMBER_WORDS = ("no", "one", "two", "three", "four", "five", "six")


@dataclasses.dataclass(frozen=True)
class SceneObject:
    shape: str
    color: str
    material: str
    size: str
    x: float
    z: float
    angle: float  # rotation about the vertical axis (cubes)

    @property
    def scale(self) -> float:
        return SIZES[self.size]

    @property
    def radius(self) -> float:
        """Footprint radius (half-size for cubes)."""
        return {"sphere": 1.0, "cube": 0.8, "cylinder": 0.8, "cone": 0.9}[self.shape] * self.scale

    @property
    def height(self) -> float:
        return {"sphere": 2.0, "cube": 1.6, "cylinder": 1.8, "cone": 2.2}[self.shape] * self.scale

    @property
    def bounding_radius(self) -> float:
        return self.radius * (math.sqrt(2.0) if self.shape == "cube" else 1.0)

    @property
    def center(self) -> np.ndarray:
        return np.array([self.x, self.height / 2, self.z])


@dataclasses.dataclass(frozen=True)
class Scene:
    objects: tuple[SceneObject, ...]
    camera_position: np.ndarray
    camera_target: np.ndarray
    light_direction: np.ndarray  # unit vector towards the light
    floor_color: tuple[int, int, int]

    def camera_basis(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        forward = _normalize(self.camera_target - self.camera_position)
        right = _normalize(np.cross(forward, [0.0, 1.0, 0.0]))
        return forward, right, np.cross(right, forward)

    def to_json(self) -> dict:
        return dict(
            objects=[dataclasses.asdict(o) for o in self.objects],
            camera_position=self.camera_position.tolist(), camera_target=self.camera_target.tolist(),
            light_direction=self.light_direction.tolist(), floor_color=list(self.floor_color),
            field_of_view_deg=FIELD_OF_VIEW_DEG)


@dataclasses.dataclass(frozen=True)
class Rendering:
    rgb: np.ndarray  # uint8 [H, W, 3]
    depth: np.ndarray  # float32 [H, W], camera-space z; 0 where no surface
    normal: np.ndarray  # uint8 [H, W, 3], camera frame (x right, y up, z to the viewer), (n+1)/2*255
    semseg: np.ndarray  # uint8 [H, W], index into CLASS_NAMES
    instance: np.ndarray  # int16 [H, W], index into scene.objects; -1 for floor and background


def _normalize(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, np.float64)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def sample_scene(rng: np.random.Generator) -> Scene:
    objects: list[SceneObject] = []
    for _ in range(int(rng.integers(1, MAX_OBJECTS + 1))):
        shape = SHAPES[rng.integers(len(SHAPES))]
        color = list(COLORS)[rng.integers(len(COLORS))]
        material = MATERIALS[rng.integers(len(MATERIALS))]
        size = list(SIZES)[rng.integers(len(SIZES))]
        angle = float(rng.uniform(0, math.pi / 2))
        for _ in range(50):
            x, z = rng.uniform(-ARENA, ARENA, size=2)
            candidate = SceneObject(shape, color, material, size, float(x), float(z), angle)
            if all(math.hypot(x - o.x, z - o.z) > candidate.bounding_radius + o.bounding_radius + 0.1
                   for o in objects):
                objects.append(candidate)
                break
    azimuth = rng.uniform(0, 2 * math.pi)
    elevation = math.radians(rng.uniform(32, 55))
    distance = rng.uniform(7, 9.5)
    position = distance * np.array([math.cos(elevation) * math.cos(azimuth), math.sin(elevation),
                                    math.cos(elevation) * math.sin(azimuth)])
    target = np.array([rng.uniform(-0.5, 0.5), 0.3, rng.uniform(-0.5, 0.5)])
    light_azimuth = rng.uniform(0, 2 * math.pi)
    light_elevation = math.radians(rng.uniform(35, 70))
    light = np.array([math.cos(light_elevation) * math.cos(light_azimuth), math.sin(light_elevation),
                      math.cos(light_elevation) * math.sin(light_azimuth)])
    floor = tuple(int(v) for v in np.clip(rng.normal(185, 12) + rng.normal(0, 6, size=3), 120, 235))
    return Scene(tuple(objects), position, target, light, floor)


# ---------------------------------------------------------------------------------------------
# Ray-primitive intersections over arrays of rays: origins o and unit directions d, [P, 3] each
# (o may broadcast as [1, 3]). Each returns the nearest hit distance t > eps, inf for a miss.

def _pick_nearest(*candidates: np.ndarray) -> np.ndarray:
    return np.minimum.reduce([np.where(np.isfinite(c) & (c > _EPS), c, np.inf) for c in candidates])


def _intersect_sphere(obj: SceneObject, o: np.ndarray, d: np.ndarray) -> np.ndarray:
    oc = o - obj.center
    b = (oc * d).sum(-1)
    c = (oc * oc).sum(-1) - obj.radius ** 2
    disc = b * b - c
    root = np.sqrt(np.where(disc >= 0, disc, np.nan))
    return _pick_nearest(-b - root, -b + root)


def _to_local(obj: SceneObject, v: np.ndarray) -> np.ndarray:
    cos, sin = math.cos(obj.angle), math.sin(obj.angle)
    return np.stack([cos * v[..., 0] + sin * v[..., 2], v[..., 1], -sin * v[..., 0] + cos * v[..., 2]], -1)


def _from_local(obj: SceneObject, v: np.ndarray) -> np.ndarray:
    cos, sin = math.cos(obj.angle), math.sin(obj.angle)
    return np.stack([cos * v[..., 0] - sin * v[..., 2], v[..., 1], sin * v[..., 0] + cos * v[..., 2]], -1)


def _intersect_cube(obj: SceneObject, o: np.ndarray, d: np.ndarray) -> np.ndarray:
    half = obj.radius
    lo = _to_local(obj, o - obj.center)
    ld = _to_local(obj, d)
    inverse = 1.0 / np.where(ld == 0, 1e-30, ld)
    t1, t2 = (-half - lo) * inverse, (half - lo) * inverse
    near = np.minimum(t1, t2).max(-1)
    far = np.maximum(t1, t2).min(-1)
    hit = near <= far
    return _pick_nearest(np.where(hit, near, np.inf), np.where(hit, far, np.inf))


def _intersect_cylinder(obj: SceneObject, o: np.ndarray, d: np.ndarray) -> np.ndarray:
    px, oy, pz = o[..., 0] - obj.x, o[..., 1], o[..., 2] - obj.z
    dx, dy, dz = d[..., 0], d[..., 1], d[..., 2]
    a = dx * dx + dz * dz
    b = px * dx + pz * dz
    c = px * px + pz * pz - obj.radius ** 2
    disc = b * b - a * c
    root = np.sqrt(np.where(disc >= 0, disc, np.nan))
    sides = [(-b - root) / a, (-b + root) / a]
    sides = [np.where((oy + t * dy >= 0) & (oy + t * dy <= obj.height), t, np.inf) for t in sides]
    cap = (obj.height - oy) / dy
    cap_x, cap_z = px + cap * dx, pz + cap * dz
    cap = np.where(cap_x * cap_x + cap_z * cap_z <= obj.radius ** 2, cap, np.inf)
    return _pick_nearest(*sides, cap)


def _intersect_cone(obj: SceneObject, o: np.ndarray, d: np.ndarray) -> np.ndarray:
    k2 = (obj.radius / obj.height) ** 2
    px, pz = o[..., 0] - obj.x, o[..., 2] - obj.z
    y0, dy_ = obj.height - o[..., 1], -d[..., 1]  # height below the apex, and its rate
    dx, dz = d[..., 0], d[..., 2]
    a = dx * dx + dz * dz - k2 * dy_ * dy_
    b = px * dx + pz * dz - k2 * y0 * dy_
    c = px * px + pz * pz - k2 * y0 * y0
    disc = b * b - a * c
    root = np.sqrt(np.where(disc >= 0, disc, np.nan))
    roots = [(-b - root) / a, (-b + root) / a]
    below_apex = [(y0 + t * dy_ >= 0) & (y0 + t * dy_ <= obj.height) for t in roots]
    return _pick_nearest(*(np.where(ok, t, np.inf) for t, ok in zip(roots, below_apex, strict=True)))


_INTERSECT = {"sphere": _intersect_sphere, "cube": _intersect_cube,
              "cylinder": _intersect_cylinder, "cone": _intersect_cone}


def _surface_normal(obj: SceneObject, p: np.ndarray) -> np.ndarray:
    """Outward unit normals of `obj` at surface points p [Q, 3]."""
    if obj.shape == "sphere":
        return _normalize(p - obj.center)
    if obj.shape == "cube":
        local = _to_local(obj, p - obj.center)
        axis = np.abs(local).argmax(-1)
        normal = np.zeros_like(local)
        rows = np.arange(len(local))
        normal[rows, axis] = np.sign(local[rows, axis])
        return _from_local(obj, normal)
    x, y, z = p[..., 0] - obj.x, p[..., 1], p[..., 2] - obj.z
    if obj.shape == "cylinder":
        on_side = np.abs(np.hypot(x, z) - obj.radius) < np.abs(y - obj.height)
        side = np.stack([x, np.zeros_like(y), z], -1)
        return np.where(on_side[:, None], _normalize(side), [0.0, 1.0, 0.0])
    k2 = (obj.radius / obj.height) ** 2
    return _normalize(np.stack([x, k2 * (obj.height - y), z], -1))


def _trace(scene: Scene, o: np.ndarray, d: np.ndarray, with_floor: bool):
    """Nearest hit per ray: (t [P], hit index [P]: object index, len(objects) = floor, -1 miss)."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # misses become inf/nan
        distances = [_INTERSECT[obj.shape](obj, o, d) for obj in scene.objects]
        if with_floor:
            floor = np.where(d[..., 1] < 0, -o[..., 1] / d[..., 1], np.inf)
            distances.append(np.where(floor > _EPS, floor, np.inf))
    if not distances:
        return np.full(len(d), np.inf), np.full(len(d), -1)
    stacked = np.stack(distances)
    index = stacked.argmin(0)
    t = np.take_along_axis(stacked, index[None], 0)[0]
    return t, np.where(np.isfinite(t), index, -1)


def _srgb_to_linear(color) -> np.ndarray:
    return (np.asarray(color, np.float64) / 255.0) ** 2.2


def render(scene: Scene, image_size: int) -> Rendering:
    """Ray-casts the scene at image_size x image_size pixels."""
    size = image_size
    forward, right, up = scene.camera_basis()
    half = math.tan(math.radians(FIELD_OF_VIEW_DEG) / 2)
    coords = (np.arange(size) + 0.5) / size * 2 - 1
    ndc_y, ndc_x = np.meshgrid(-coords * half, coords * half, indexing="ij")
    d = _normalize(forward + ndc_x.reshape(-1, 1) * right + ndc_y.reshape(-1, 1) * up)
    o = scene.camera_position[None]
    t, hit = _trace(scene, o, d, with_floor=True)
    num_objects = len(scene.objects)
    surface = hit >= 0
    points = o + np.where(surface, t, 0)[:, None] * d

    normals = np.zeros_like(d)
    normals[hit == num_objects] = [0.0, 1.0, 0.0]
    albedo = np.zeros_like(d)
    albedo[hit == num_objects] = _srgb_to_linear(scene.floor_color)
    metal = np.zeros(len(d), bool)
    for index, obj in enumerate(scene.objects):
        on = hit == index
        if on.any():
            normals[on] = _surface_normal(obj, points[on])
            albedo[on] = _srgb_to_linear(COLORS[obj.color])
            metal[on] = obj.material == "metal"

    light = scene.light_direction
    shadow_o = points[surface] + normals[surface] * 1e-3
    shadow_t, _ = _trace(scene, shadow_o, np.broadcast_to(light, shadow_o.shape), with_floor=False)
    lit = np.zeros(len(d))
    lit[surface] = np.isinf(shadow_t)

    n_dot_l = np.clip(normals @ light, 0, None) * lit
    halfway = _normalize(light[None] - d)
    n_dot_h = np.clip((normals * halfway).sum(-1), 0, None)
    shininess = np.where(metal, 60.0, 8.0)
    specular = np.where(metal, 0.9, 0.08) * n_dot_h ** shininess * lit
    reflected_up = np.clip((d - 2 * (d * normals).sum(-1, keepdims=True) * normals)[:, 1], 0, 1)
    environment = (reflected_up[:, None] * _srgb_to_linear((200, 210, 225))
                   + (1 - reflected_up[:, None]) * _srgb_to_linear(scene.floor_color))
    diffuse_weight = np.where(metal, 0.55, 1.0)[:, None]
    color = albedo * diffuse_weight * (0.22 + 0.85 * n_dot_l[:, None]) + specular[:, None]
    color += np.where(metal, 0.35, 0.0)[:, None] * environment * (0.4 + 0.6 * albedo)
    sky = _srgb_to_linear((200, 210, 225)) * (0.8 + 0.2 * np.clip(d[:, 1:2] + 0.5, 0, 1))
    color = np.where(surface[:, None], color, sky)
    rgb = np.rint(np.clip(color, 0, 1) ** (1 / 2.2) * 255).astype(np.uint8)

    depth = np.where(surface, t * (d @ forward), 0.0)
    camera_normal = np.stack([normals @ right, normals @ up, -(normals @ forward)], -1)
    normal_rgb = np.where(surface[:, None], np.rint((camera_normal + 1) * 127.5), 0).astype(np.uint8)
    object_class = np.array([CLASS_NAMES.index(o.shape) for o in scene.objects] + [1, 0])
    semseg = object_class[np.where(hit < 0, num_objects + 1, hit)].astype(np.uint8)
    instance = np.where((hit >= 0) & (hit < num_objects), hit, -1).astype(np.int16)
    shape = (size, size)
    return Rendering(rgb.reshape(*shape, 3), depth.reshape(shape).astype(np.float32),
                     normal_rgb.reshape(*shape, 3), semseg.reshape(shape), instance.reshape(shape))


# ---------------------------------------------------------------------------------------------
# Annotations derived from the scene graph and the labels.

def visible_objects(rendering: Rendering, min_pixels: int | None = None) -> list[int]:
    """Indices of objects covering at least min_pixels (default: 0.1% of the image, at least 4)."""
    size = rendering.instance.size
    min_pixels = max(4, size // 1000) if min_pixels is None else min_pixels
    counts = np.bincount(rendering.instance.ravel() + 1, minlength=MAX_OBJECTS + 1)[1:]
    return [i for i, count in enumerate(counts) if count >= min_pixels]


def detections(scene: Scene, rendering: Rendering) -> dict:
    """Boxes of the visible objects: normalised (xmin, ymin, xmax, ymax), class name, score 1."""
    height, width = rendering.instance.shape
    boxes, names = [], []
    for index in visible_objects(rendering):
        rows, cols = np.nonzero(rendering.instance == index)
        boxes.append([cols.min() / width, rows.min() / height,
                      (cols.max() + 1) / width, (rows.max() + 1) / height])
        names.append(scene.objects[index].shape)
    return {"boxes": np.asarray(boxes, np.float32).reshape(-1, 4), "class_name": names,
            "score": np.ones(len(names), np.float32)}


def _camera_coords(scene: Scene, point: np.ndarray) -> np.ndarray:
    """(x right, y up, z forward) of a world point in the camera frame."""
    return np.stack(scene.camera_basis(), 0)[[1, 2, 0]] @ (point - scene.camera_position)


def _phrase(obj: SceneObject) -> str:
    return f"{obj.size} {obj.color} {obj.material} {obj.shape}"


def _reference(obj: SceneObject, others: list[SceneObject]) -> str | None:
    """Shortest description singling `obj` out among `others` (colour+shape, +size, +material);
    None when another object looks the same."""
    for attributes in (("color", "shape"), ("size", "color", "shape"),
                       ("size", "color", "material", "shape")):
        key = tuple(getattr(obj, a) for a in attributes)
        if sum(tuple(getattr(o, a) for a in attributes) == key for o in others) == 1:
            return "the " + " ".join(key)
    return None


def _relation(scene: Scene, a: SceneObject, b: SceneObject) -> str:
    """Where a is relative to b, from the camera's point of view."""
    ca, cb = _camera_coords(scene, a.center), _camera_coords(scene, b.center)
    sideways = ca[0] / ca[2] - cb[0] / cb[2]  # difference of horizontal image positions
    depthwise = ca[2] - cb[2]
    if abs(sideways) * 8 > abs(depthwise):
        return "to the left of" if sideways < 0 else "to the right of"
    return "behind" if depthwise > 0 else "in front of"


def caption(scene: Scene, rendering: Rendering, rng: np.random.Generator) -> str:
    """One or more sentences listing the visible objects, left to right, and a few relations."""
    visible = visible_objects(rendering)
    def image_x(obj: SceneObject) -> float:
        x, _, z = _camera_coords(scene, obj.center)
        return x / z

    objects = sorted((scene.objects[i] for i in visible), key=image_x)
    if not objects:
        return "An empty floor with no objects."
    phrases = [f"a {_phrase(o)}" for o in objects]
    listing = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    count = _NUMBER_WORDS[len(objects)]
    openings = ([f"There is one object on the floor: {listing}."] if len(objects) == 1 else
                [f"There are {count} objects on the floor: {listing}.",
                 f"A scene with {count} objects: {listing}.",
                 f"From left to right: {listing}."])
    sentences = [openings[rng.integers(len(openings))]]
    references = [_reference(o, objects) for o in objects]
    pairs = [(i, j) for i in range(len(objects)) for j in range(len(objects))
             if i != j and references[i] and references[j]]
    for pick in rng.permutation(len(pairs))[:min(2, len(objects) - 1)]:
        i, j = pairs[pick]
        sentence = f"{references[i]} is {_relation(scene, objects[i], objects[j])} {references[j]}."
        sentences.append(sentence[0].upper() + sentence[1:])
    return " ".join(sentences)
