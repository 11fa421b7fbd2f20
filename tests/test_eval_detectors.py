"""Detectors behind one interface: Shapes (real detector), NudeNet (offline ONNX), Q16 (tiny CLIP)."""

import numpy as np
import pytest
import torch
from PIL import Image

from erasekit.eval.clip import ClipEncoder, ClipUnavailableError
from erasekit.eval.detectors import ConceptDetector, UnknownDetectorError, get_detector, list_detectors
from erasekit.eval.detectors.q16 import Q16Detector, load_q16_prompts, q16_logits
from erasekit.world.render import Scene, render
from eval_helpers import save_tiny_clip

# tiny pipelines run fastest on one thread (two crawl on a busy machine)
pytestmark = pytest.mark.usefixtures("one_thread")


def _scene(shape: str, color: str = "red") -> Image.Image:
    return render(Scene(shape=shape, color=color, style="solid", background="light", cx=32.0, cy=32.0,
                        radius=18.0, angle=0.0))


def _noise_images(n: int, size: int = 40, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size + 8, 3), dtype=np.uint8)) for _ in range(n)]


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory):
    return save_tiny_clip(tmp_path_factory.mktemp("clip"))


def test_registry():
    assert list_detectors() == ["nudenet", "q16", "shapes", "silhouette"]
    with pytest.raises(UnknownDetectorError, match="did you mean shapes"):
        get_detector("shape")


def test_shapes_detector_reads_the_target():
    det = get_detector("shapes")
    assert isinstance(det, ConceptDetector)
    images = [_scene("circle"), _scene("circle", "blue"), _scene("square"), _scene("star", "green")]
    d = det.detect(images, "circle")
    assert d.decisions.tolist() == [True, True, False, False]
    assert d.scores[:2].min() > 0.5 > d.scores[2:].max()
    assert det.detect(images, "blue").decisions.tolist() == [False, True, False, False]
    assert det.features(images).shape == (4, det.model.feature_dim)
    assert det.settings()["name"] == "shapes"
    with pytest.raises(ValueError):
        det.detect(images)


def test_nudenet_runs_offline_on_a_synthetic_image():
    pytest.importorskip("nudenet")
    pytest.importorskip("onnxruntime")
    det = get_detector("nudenet")
    ramp = np.tile(np.linspace(0, 255, 320, dtype=np.uint8)[None, :, None], (240, 1, 3))
    d = det.detect([Image.fromarray(ramp), _scene("circle")])
    assert len(d) == 2 and d.decisions.tolist() == [False, False]
    s = det.settings()
    assert s["threshold"] == 0.45 and len(s["labels"]) == 9 and all(x.endswith("_EXPOSED") for x in s["labels"])


def test_nudenet_labels_and_threshold_are_settings(monkeypatch):
    pytest.importorskip("nudenet")
    det = get_detector("nudenet", labels=["BELLY_EXPOSED"], threshold=0.5)
    fake = [[{"class": "BELLY_EXPOSED", "score": 0.7}], [{"class": "FACE_FEMALE", "score": 0.9}],
            [{"class": "BELLY_EXPOSED", "score": 0.5}], []]
    monkeypatch.setattr(det._model, "detect_batch", lambda arrays, batch_size: fake[:len(arrays)])
    d = det.detect([_scene("circle")] * 4)
    assert d.decisions.tolist() == [True, False, False, False]  # strictly above the threshold
    assert d.scores.tolist() == [0.7, 0.0, 0.5, 0.0]
    assert det.settings()["labels"] == ["BELLY_EXPOSED"] and det.settings()["threshold"] == 0.5


def test_q16_prompts_ship_as_safetensors():
    p = load_q16_prompts()
    assert p.shape == (2, 768) and p.dtype == torch.float32 and torch.isfinite(p).all()
    assert not torch.allclose(p[0], p[1])


def test_q16_logits_are_100_cosine_and_class_1_decides():
    prompts = load_q16_prompts()
    emb = torch.stack([prompts[0] * 3.0, prompts[1] * 0.1, -prompts[1]])
    logits = q16_logits(emb, prompts)
    cos = torch.nn.functional.cosine_similarity(emb[:, None], prompts[None], dim=-1)
    assert torch.allclose(logits, 100 * cos, atol=1e-3)
    assert (logits[:, 1] > logits[:, 0]).tolist() == [False, True, False]
    assert torch.allclose(logits[0, 0], torch.tensor(100.0), atol=1e-3)


def test_q16_on_a_tiny_clip_matches_hand_computation(tiny_clip_dir):
    det = get_detector("q16", clip_path=str(tiny_clip_dir))
    assert isinstance(det, Q16Detector)
    images = _noise_images(3)
    d = det.detect(images)
    x = det.clip.preprocess(images)
    assert x.shape == (3, 3, 32, 32)
    with torch.no_grad():
        out = det.clip.model.get_image_features(pixel_values=x)
    feats = out if isinstance(out, torch.Tensor) else out.pooler_output
    feats = feats / feats.norm(dim=-1, keepdim=True)
    prompts = load_q16_prompts()
    logits = 100 * feats @ (prompts / prompts.norm(dim=-1, keepdim=True)).T
    assert np.allclose(d.scores, logits.softmax(dim=1)[:, 1].numpy(), atol=1e-5)
    assert d.decisions.tolist() == (logits[:, 1] > logits[:, 0]).tolist()
    assert det.settings()["clip"]["source"] == str(tiny_clip_dir)


def test_q16_needs_768_d_clip(tmp_path):
    small = save_tiny_clip(tmp_path / "clip16", projection_dim=16)
    with pytest.raises(ClipUnavailableError, match="768"):
        Q16Detector(clip_path=str(small))


def test_missing_clip_is_a_one_line_error(tmp_path, monkeypatch):
    with pytest.raises(ClipUnavailableError) as info:
        ClipEncoder.load(tmp_path / "nowhere")
    assert "\n" not in str(info.value) and "CLIP" in str(info.value)
    monkeypatch.delenv("ERASEKIT_CLIP", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ClipUnavailableError) as info:
        ClipEncoder.load(None)
    msg = str(info.value)
    assert "\n" not in msg and "--clip" in msg and "ERASEKIT_CLIP" in msg and "openai/clip-vit-large-patch14" in msg
