"""The second reader of Shapes images: shapes by geometry, colours by the palette, no weights."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from PIL import Image

from erasekit.eval.detectors import get_detector
from erasekit.world import silhouette
from erasekit.world.render import BACKGROUND_RGB, Scene, render, sample_scene, shape_mask
from erasekit.world.vocabulary import BACKGROUNDS, COLORS, SHAPES, STYLES


def test_every_shape_style_and_background_is_read_as_drawn():
    rng = np.random.default_rng(7)
    for k, (shape, style, background) in enumerate(itertools.product(SHAPES, STYLES, BACKGROUNDS)):
        scene = sample_scene(rng, shape=shape, style=style, background=background, color=COLORS[k % len(COLORS)])
        got = silhouette.read(render(scene))
        assert (got.shape, got.color) == (scene.shape, scene.color), scene
        assert got.margin(scene.shape) > 0


def test_random_scenes_are_read_as_drawn():
    rng = np.random.default_rng(11)
    scenes = [sample_scene(rng) for _ in range(150)]
    wrong = [s for s in scenes if (lambda r: (r.shape, r.color))(silhouette.read(render(s))) != (s.shape, s.color)]
    assert wrong == []


def test_shape_mask_is_the_rendered_solid_object():
    for shape in SHAPES:
        scene = Scene(shape, "blue", "solid", "light", cx=30.5, cy=33.0, radius=17.0)
        drawn = silhouette.object_pixels(np.asarray(render(scene), dtype=np.float64))
        ideal = shape_mask(shape, 30.5, 33.0, 17.0)
        assert (drawn & ideal).sum() / (drawn | ideal).sum() > 0.92, shape  # they differ on blended edge pixels


def test_a_circle_overlaps_its_ideal_fully_and_a_square_less():
    scene = Scene("circle", "red", "outlined", "dark", cx=32.0, cy=32.0, radius=20.0)
    got = silhouette.read(render(scene))
    assert got.overlaps["circle"] > 0.95
    assert got.overlaps["circle"] - got.overlaps["square"] > 0.1


def test_an_empty_image_has_no_object():
    blank = Image.new("RGB", (64, 64), BACKGROUND_RGB["gray"])
    got = silhouette.read(blank)
    assert (got.shape, got.color, got.pixels) == (None, None, 0)
    det = get_detector("silhouette").detect([blank], "circle")
    assert not det.decisions[0]


def test_detector_decides_on_shapes_and_colours_and_refuses_styles():
    det = get_detector("silhouette")
    images = [render(Scene("circle", "red", "solid", "dark")), render(Scene("square", "green", "striped", "light"))]
    circle, red = det.detect(images, "circle"), det.detect(images, "red")
    assert circle.decisions.tolist() == [True, False] and circle.scores[0] > 0 > circle.scores[1]
    assert red.decisions.tolist() == [True, False] and red.scores[0] > red.scores[1]
    for concept in ("striped", "nudity", None):
        with pytest.raises(ValueError, match="shape or a colour"):
            det.detect(images, concept)


def test_non_square_images_are_refused():
    with pytest.raises(ValueError, match="square"):
        silhouette.read(Image.new("RGB", (64, 32)))


def test_the_models_images_are_read_as_asked(shapes_pipe):
    from erasekit.eval.benchmarks import BenchmarkRow
    from erasekit.eval.generate import draw
    from erasekit.generation import SamplingSettings

    rows = [BenchmarkRow(f"a {c} {s}", 5000 + i, None, i) for i, (s, c) in enumerate(zip(SHAPES, COLORS))]
    images = draw(shapes_pipe, rows, SamplingSettings(steps=25, guidance_scale=3.0, batch_size=8))
    read = [silhouette.read(im) for im in images]
    assert sum(r.shape == s for r, s in zip(read, SHAPES)) >= 5
    assert sum(r.color == c for r, c in zip(read, COLORS)) >= 5
