import math
import re

import numpy as np
import pytest

from fourm_jax.data import scenes

SIZE = 48


def scene_and_rendering(index: int, size: int = SIZE):
    rng = np.random.default_rng([7, index])
    scene = scenes.sample_scene(rng)
    return scene, scenes.render(scene, size), rng


def camera(scene):
    forward = scene.camera_target - scene.camera_position
    forward = forward / np.linalg.norm(forward)
    right = np.cross(forward, [0.0, 1.0, 0.0])
    right /= np.linalg.norm(right)
    return forward, right, np.cross(right, forward)


def back_project(scene, depth):
    """World points [H, W, 3] of a depth map under the pinhole camera the scene defines."""
    size = depth.shape[0]
    forward, right, up = camera(scene)
    half = math.tan(math.radians(scenes.FIELD_OF_VIEW_DEG) / 2)
    coords = ((np.arange(size) + 0.5) / size * 2 - 1) * half
    rays = forward + coords[None, :, None] * right - coords[:, None, None] * up
    rays /= np.linalg.norm(rays, axis=-1, keepdims=True)
    distance = depth / (rays @ forward)
    return scene.camera_position + distance[..., None] * rays


def expected_normal(obj, p):
    """Outward normals at surface points p [Q, 3], from each primitive's definition."""
    if obj.shape == "sphere":
        return (p - [obj.x, obj.radius, obj.z]) / obj.radius
    x, y, z = p[:, 0] - obj.x, p[:, 1], p[:, 2] - obj.z
    if obj.shape == "cube":
        c, s = math.cos(obj.angle), math.sin(obj.angle)
        local = np.stack([c * x + s * z, y - obj.radius, -s * x + c * z], -1)
        axis = np.abs(local).argmax(-1)
        n_local = np.zeros_like(local)
        n_local[np.arange(len(p)), axis] = np.sign(local[np.arange(len(p)), axis])
        return np.stack([c * n_local[:, 0] - s * n_local[:, 2], n_local[:, 1],
                         s * n_local[:, 0] + c * n_local[:, 2]], -1)
    if obj.shape == "cylinder":
        side = np.abs(np.hypot(x, z) - obj.radius) < np.abs(y - obj.height)
        radial = np.stack([x, 0 * y, z], -1) / obj.radius
        return np.where(side[:, None], radial, [0.0, 1.0, 0.0])
    slope = obj.radius / obj.height
    n = np.stack([x, slope ** 2 * (obj.height - y), z], -1)
    return n / np.linalg.norm(n, axis=-1, keepdims=True)


def surface_residual(obj, p):
    """Distance-like residual of points p [Q, 3] from the primitive's surface (0 on it)."""
    x, y, z = p[:, 0] - obj.x, p[:, 1], p[:, 2] - obj.z
    if obj.shape == "sphere":
        return np.abs(np.linalg.norm(p - [obj.x, obj.radius, obj.z], axis=-1) - obj.radius)
    if obj.shape == "cube":
        c, s = math.cos(obj.angle), math.sin(obj.angle)
        local = np.stack([c * x + s * z, y - obj.radius, -s * x + c * z], -1)
        return np.abs(np.abs(local).max(-1) - obj.radius)
    radial = np.hypot(x, z)
    if obj.shape == "cylinder":
        on_side = np.abs(radial - obj.radius) + np.clip(-y, 0, None) + np.clip(y - obj.height, 0, None)
        on_top = np.abs(y - obj.height) + np.clip(radial - obj.radius, 0, None)
        return np.minimum(on_side, on_top)
    return np.abs(radial - obj.radius / obj.height * (obj.height - y)) + np.clip(-y, 0, None)


@pytest.mark.parametrize("index", range(12))
def test_depth_normals_and_labels_are_pixel_exact(index):
    scene, rendering, _ = scene_and_rendering(index)
    points = back_project(scene, rendering.depth.astype(np.float64))
    forward, right, up = camera(scene)
    n_camera = rendering.normal.astype(np.float64) / 127.5 - 1
    n_world = n_camera[..., :1] * right + n_camera[..., 1:2] * up - n_camera[..., 2:] * forward

    floor = rendering.semseg == scenes.CLASS_NAMES.index("floor")
    assert floor.any()
    np.testing.assert_allclose(points[floor][:, 1], 0, atol=2e-3 * 15)
    np.testing.assert_allclose(n_world[floor], np.broadcast_to([0, 1, 0], n_world[floor].shape),
                               atol=0.01)
    assert np.all(rendering.instance[floor] == -1)
    for k, obj in enumerate(scene.objects):
        mask = rendering.instance == k
        if not mask.any():
            continue
        assert np.all(rendering.semseg[mask] == scenes.CLASS_NAMES.index(obj.shape))
        assert surface_residual(obj, points[mask]).max() < 2e-3, obj
        np.testing.assert_allclose(n_world[mask], expected_normal(obj, points[mask]), atol=0.02)
    background = rendering.semseg == 0
    assert np.all(rendering.depth[background] == 0) and np.all(rendering.depth[~background] > 0)


def test_sphere_seen_head_on():
    sphere = scenes.SceneObject("sphere", "red", "rubber", "large", 0.0, 0.0, 0.0)
    scene = scenes.Scene((sphere,), camera_position=np.array([0.0, sphere.radius, 8.0]),
                         camera_target=np.array([0.0, sphere.radius, 0.0]),
                         light_direction=np.array([0.0, 1.0, 0.0]), floor_color=(180, 180, 180))
    rendering = scenes.render(scene, 64)
    # the four central pixels look half a pixel off the axis, at angle theta to it
    offset = math.tan(math.radians(scenes.FIELD_OF_VIEW_DEG / 2)) / 64
    cos = 1 / math.sqrt(1 + 2 * offset ** 2)
    hit = 8 * cos - math.sqrt(sphere.radius ** 2 - 64 * (1 - cos ** 2))
    np.testing.assert_allclose(rendering.depth[31:33, 31:33], hit * cos, rtol=1e-6)
    # there the normal leans half-pixel's worth of hit offset away from the axis, towards the pixel
    lean = hit * offset * cos / sphere.radius
    normal = np.array([-lean, lean, math.sqrt(1 - 2 * lean ** 2)])  # pixel (31, 31): left, up
    np.testing.assert_allclose(rendering.normal[31, 31], (normal + 1) * 127.5, atol=0.51)
    np.testing.assert_array_equal(rendering.normal[32, 32], [255, 255, 0] - rendering.normal[31, 31]
                                  * [1, 1, -1])
    assert rendering.semseg[32, 32] == scenes.CLASS_NAMES.index("sphere")
    radius_px = 32 * sphere.radius / math.sqrt(8 ** 2 - sphere.radius ** 2) / math.tan(
        math.radians(scenes.FIELD_OF_VIEW_DEG / 2))
    assert abs((rendering.instance[32] == 0).sum() - 2 * radius_px) <= 2


def test_boxes_are_the_instance_extents():
    for index in range(6):
        scene, rendering, _ = scene_and_rendering(index)
        det = scenes.detections(scene, rendering)
        visible = scenes.visible_objects(rendering)
        assert det["class_name"] == [scene.objects[k].shape for k in visible]
        assert det["boxes"].dtype == np.float32 and np.all(det["score"] == 1)
        for box, k in zip(det["boxes"], visible, strict=True):
            rows, cols = np.nonzero(rendering.instance == k)
            expected = [cols.min() / SIZE, rows.min() / SIZE, (cols.max() + 1) / SIZE,
                        (rows.max() + 1) / SIZE]
            np.testing.assert_allclose(box, expected, rtol=1e-6)
            assert 0 <= box[0] < box[2] <= 1 and 0 <= box[1] < box[3] <= 1


def project_x(scene, obj):
    forward, right, _ = camera(scene)
    v = np.array([obj.x, obj.height / 2, obj.z]) - scene.camera_position
    return (v @ right) / (v @ forward)


def the_one(objects, words, text):
    """The only object whose attributes include all the words of a reference like 'red cube'."""
    matches = [o for o in objects if set(words.split()) <= {o.size, o.color, o.material, o.shape}]
    assert len(matches) == 1, (words, text)
    return matches[0]


def test_caption_lists_the_visible_objects_and_true_relations():
    relations_checked = 0
    for index in range(30):
        scene, rendering, rng = scene_and_rendering(index)
        text = scenes.caption(scene, rendering, rng)
        visible = [scene.objects[k] for k in scenes.visible_objects(rendering)]
        for obj in visible:
            assert f"a {obj.size} {obj.color} {obj.material} {obj.shape}" in text
        if len(visible) > 1:
            assert ["no", "one", "two", "three", "four", "five", "six"][len(visible)] in text \
                or text.startswith("From left to right")
        for first, relation, second in re.findall(
                r"The ([a-z ]+?) is (to the left of|to the right of) the ([a-z ]+?)\.", text):
            a, b = the_one(visible, first, text), the_one(visible, second, text)
            assert (project_x(scene, a) < project_x(scene, b)) == (relation == "to the left of")
            relations_checked += 1
    assert relations_checked >= 5


def test_rendering_is_deterministic_and_sized():
    scene, first, _ = scene_and_rendering(3, size=224)
    again = scenes.render(scenes.sample_scene(np.random.default_rng([7, 3])), 224)
    for field in ("rgb", "depth", "normal", "semseg", "instance"):
        np.testing.assert_array_equal(getattr(first, field), getattr(again, field))
    assert first.rgb.shape == (224, 224, 3) and first.rgb.dtype == np.uint8
    assert first.depth.shape == (224, 224) and first.depth.dtype == np.float32
    assert first.semseg.max() < len(scenes.CLASS_NAMES)
