import numpy as np

from erasekit.world.dataset import labels_of
from erasekit.world.render import Scene, render, sample_scene
from erasekit.world.vocabulary import ATTRIBUTES, BACKGROUNDS, COLORS, SHAPES, STYLES


def test_world_has_required_variety():
    assert len(SHAPES) >= 6 and len(COLORS) >= 6 and len(STYLES) >= 4 and len(BACKGROUNDS) >= 3


def test_render_is_deterministic_given_seed():
    a = [np.asarray(render(sample_scene(np.random.default_rng(7)))) for _ in range(2)]
    assert a[0].shape == (64, 64, 3) and a[0].dtype == np.uint8
    assert np.array_equal(a[0], a[1])
    other = np.asarray(render(sample_scene(np.random.default_rng(8))))
    assert not np.array_equal(a[0], other)


def test_every_value_renders_differently():
    base = dict(cx=32.0, cy=32.0, radius=20.0, angle=45.0)
    for attribute, values in zip(ATTRIBUTES, (SHAPES, COLORS, STYLES, BACKGROUNDS)):
        imgs = []
        for v in values:
            attrs = {"shape": "circle", "color": "red", "style": "solid", "background": "light", attribute: v}
            imgs.append(np.asarray(render(Scene(**attrs, **base))).astype(int))
        for i in range(len(imgs)):
            for j in range(i + 1, len(imgs)):
                assert np.abs(imgs[i] - imgs[j]).mean() > 1.0, (attribute, values[i], values[j])


def test_fixed_attributes_are_kept_and_labelled():
    rng = np.random.default_rng(0)
    scene = sample_scene(rng, shape="star", color="blue")
    assert scene.shape == "star" and scene.color == "blue"
    assert labels_of(scene)[0] == SHAPES.index("star")
    assert labels_of(scene)[1] == COLORS.index("blue")
