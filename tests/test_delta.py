"""WeightDelta: exact apply/revert, refusal on mismatch, file format, composition (export: tests/test_export_*.py)."""

import json
from types import SimpleNamespace

import pytest
import torch
from transformers import CLIPTextConfig, CLIPTextModel

from erasekit.models.delta import (
    MANIFEST_FILE,
    TENSORS_FILE,
    DeltaError,
    DeltaFormatError,
    DeltaMismatchError,
    WeightDelta,
    apply_delta,
    bitwise_equal,
    fingerprint,
    revert_delta,
    snapshot,
)
from erasekit.models.scopes import get_scope
from erasekit.models.tiny import tiny_unet

# tiny pipelines run fastest on one thread (two crawl on a busy machine)
pytestmark = pytest.mark.usefixtures("one_thread")


def _text_encoder(seed=0):
    torch.manual_seed(seed)
    cfg = CLIPTextConfig(vocab_size=100, hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                         num_attention_heads=4, max_position_embeddings=16, bos_token_id=0, eos_token_id=2)
    return CLIPTextModel(cfg).eval()


def make_pipe(seed=0, family="sd1"):
    return SimpleNamespace(unet=tiny_unet(family, seed=seed), text_encoder=_text_encoder(seed))


def full_state(pipe):
    return {f"{c}.{n}": t.detach().clone() for c in ("unet", "text_encoder") if hasattr(pipe, c)
            for n, t in getattr(pipe, c).state_dict().items()}


def assert_same_state(pipe, state):
    now = full_state(pipe)
    assert set(now) == set(state)
    assert all(bitwise_equal(now[n], state[n]) for n in state)


def te_name(pipe, suffix):
    """Qualified text-encoder tensor name (layouts differ between transformers versions)."""
    return next(f"text_encoder.{n}" for n, _ in pipe.text_encoder.named_parameters() if n.endswith(suffix))


def kv_names(pipe):
    return sorted(get_scope("cross_attn_kv").select(pipe.unet, prefix="unet."))


def edit(pipe, names, scale=0.1, seed=1):
    g = torch.Generator().manual_seed(seed)
    live = {**{f"unet.{n}": p for n, p in pipe.unet.named_parameters()},
            **{f"text_encoder.{n}": p for n, p in pipe.text_encoder.named_parameters()}}
    with torch.no_grad():
        for n in names:
            live[n].add_(scale * torch.randn(live[n].shape, generator=g))


@pytest.fixture(scope="module")
def base_and_delta():
    """Base state plus a delta that edits half of the kv weights and one text-encoder tensor."""
    pipe = make_pipe()
    base = full_state(pipe)
    final_norm = te_name(pipe, "final_layer_norm.weight")
    watched = kv_names(pipe) + [final_norm]
    originals = snapshot(pipe, watched)
    changed = kv_names(pipe)[::2] + [final_norm]
    edit(pipe, changed)
    delta = WeightDelta.from_changes(pipe, originals, method="test", config={"eta": 0.1, "path": torch.float32},
                                     seed=7, base_model="tiny-sd1", wall_time_s=1.5, metrics={"loss": 0.25})
    return base, full_state(pipe), changed, delta


def test_from_changes_keeps_only_changed_tensors(base_and_delta):
    base, edited, changed, delta = base_and_delta
    assert delta.names == sorted(changed)
    assert delta.components == {"unet", "text_encoder"}
    for r in delta.manifest.tensors:
        assert r.base_sha256 == fingerprint(base[r.name]) and r.new_sha256 == fingerprint(edited[r.name])
        assert r.shape == list(base[r.name].shape) and r.dtype == "float32"
        assert bitwise_equal(delta.tensors[r.name], edited[r.name])


def test_apply_then_revert_is_bit_exact(base_and_delta):
    base, edited, _, delta = base_and_delta
    pipe = make_pipe()
    assert_same_state(pipe, base)
    apply_delta(pipe, delta)
    assert_same_state(pipe, edited)
    with pytest.raises(DeltaMismatchError, match="already applied"):
        apply_delta(pipe, delta)
    revert_delta(pipe, delta)
    assert_same_state(pipe, base)
    with pytest.raises(DeltaMismatchError, match="does not carry"):
        revert_delta(pipe, delta)


def test_save_load_roundtrip_and_manifest(base_and_delta, tmp_path):
    base, edited, _, delta = base_and_delta
    delta.save(tmp_path / "d")
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == [TENSORS_FILE, MANIFEST_FILE]  # no temp files left
    manifest = json.loads((tmp_path / "d" / MANIFEST_FILE).read_text())
    assert manifest["method"] == "test" and manifest["seed"] == 7 and manifest["base_model"] == "tiny-sd1"
    assert manifest["config"] == {"eta": 0.1, "path": "torch.float32"}
    assert manifest["metrics"] == {"loss": 0.25} and manifest["wall_time_s"] == 1.5
    assert manifest["peak_memory_bytes"] > 0 and manifest["parent"] is None
    assert {"torch", "diffusers", "transformers", "erasekit", "python"} <= set(manifest["versions"])
    assert len(manifest["tensors"]) == len(delta.names)
    loaded = WeightDelta.load(tmp_path / "d")
    assert loaded.manifest == delta.manifest
    pipe = make_pipe()
    apply_delta(pipe, loaded)
    assert_same_state(pipe, edited)


def _refused(pipe, delta, match):
    before = full_state(pipe)
    with pytest.raises(DeltaMismatchError, match=match):
        apply_delta(pipe, delta)
    assert_same_state(pipe, before)


def test_mismatched_fingerprints_refused_without_changes(base_and_delta):
    _, _, _, delta = base_and_delta
    _refused(make_pipe(seed=3), delta, "values differ")


def test_one_bad_tensor_means_no_partial_load(base_and_delta):
    base, _, _, delta = base_and_delta
    pipe = make_pipe()
    last = delta.names[-1]
    comp, _, rest = last.partition(".")
    with torch.no_grad():
        dict(getattr(pipe, comp).named_parameters())[rest].mul_(2)
    _refused(pipe, delta, last.replace(".", r"\."))


def test_mismatched_names_shapes_dtypes_refused(base_and_delta):
    _, _, _, delta = base_and_delta
    _refused(make_pipe(family="sdxl"), delta, "shape|not in the model")
    _refused(SimpleNamespace(unet=tiny_unet("sd1")), delta, "text_encoder.* not in the model")
    double = make_pipe()
    double.unet.to(torch.float64)
    _refused(double, delta, "dtype float64")


def test_revert_without_records_needs_the_base(base_and_delta):
    base, edited, _, delta = base_and_delta
    pipe = make_pipe()
    apply_delta(pipe, delta)
    for comp in (pipe.unet, pipe.text_encoder):
        vars(comp).pop("_erasekit_originals")
    with pytest.raises(DeltaError, match="base="):
        revert_delta(pipe, delta)
    with pytest.raises(DeltaMismatchError, match="not this delta's base"):
        revert_delta(pipe, delta, base=make_pipe(seed=3))
    assert_same_state(pipe, edited)
    revert_delta(pipe, delta, base=base)  # a flat state dict works as the base too
    assert_same_state(pipe, base)


def test_deltas_compose(base_and_delta):
    base, _, _, first = base_and_delta
    pipe = make_pipe()
    apply_delta(pipe, first)
    names = kv_names(pipe)[:2] + [te_name(pipe, "token_embedding.weight")]
    originals = snapshot(pipe, names)
    edit(pipe, names, seed=5)
    second = WeightDelta.from_changes(pipe, originals, method="second", parent=first)
    stacked = full_state(pipe)
    assert second.manifest.parent == first.delta_id
    shared = names[0]
    assert shared in first.names
    rec = {r.name: r for r in first.manifest.tensors}[shared]
    assert {r.name: r for r in second.manifest.tensors}[shared].base_sha256 == rec.new_sha256
    revert_delta(pipe, second)
    _refused(make_pipe(), second, "values differ")  # needs the parent underneath
    _refused(make_pipe(), second, f"on top of delta {first.delta_id} \\(its parent\\), which is not applied")  # and names it
    apply_delta(pipe, second)
    assert_same_state(pipe, stacked)
    with pytest.raises(DeltaMismatchError):  # the parent cannot be removed from under its child
        revert_delta(pipe, first)
    revert_delta(pipe, second)
    revert_delta(pipe, first)
    assert_same_state(pipe, base)


def test_corrupt_or_missing_files_raise_format_error(base_and_delta, tmp_path):
    _, _, _, delta = base_and_delta
    folder = delta.save(tmp_path / "d")
    tensors = folder / TENSORS_FILE
    good = tensors.read_bytes()

    tensors.write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(DeltaFormatError, match="unreadable"):
        WeightDelta.load(folder)
    tensors.write_bytes(b"garbage" * 10)
    with pytest.raises(DeltaFormatError):
        WeightDelta.load(folder)
    flipped = bytearray(good)
    flipped[-3] ^= 0xFF  # valid header, altered tensor bytes
    tensors.write_bytes(bytes(flipped))
    with pytest.raises(DeltaFormatError, match="corrupt"):
        WeightDelta.load(folder)
    tensors.write_bytes(good)

    manifest = folder / MANIFEST_FILE
    good_manifest = manifest.read_text()
    manifest.write_text(good_manifest.replace('"format_version": 1', '"format_version": 9'))
    with pytest.raises(DeltaFormatError, match="format_version"):
        WeightDelta.load(folder)
    other = json.loads(good_manifest)
    other["delta_id"] = "0" * 16
    manifest.write_text(json.dumps(other))
    with pytest.raises(DeltaFormatError, match="belongs to delta"):
        WeightDelta.load(folder)
    manifest.write_text("{not json")
    with pytest.raises(DeltaFormatError, match="invalid manifest"):
        WeightDelta.load(folder)
    manifest.unlink()
    with pytest.raises(DeltaFormatError, match="missing manifest.json"):
        WeightDelta.load(folder)


def test_revert_right_after_a_method_run():
    pipe = make_pipe()
    base = full_state(pipe)
    originals = snapshot(pipe, kv_names(pipe))
    edit(pipe, kv_names(pipe))
    delta = WeightDelta.from_changes(pipe, originals, method="inplace")
    assert len(delta.names) == len(kv_names(pipe))
    revert_delta(pipe, delta)
    assert_same_state(pipe, base)


# ------------------------------------------------------------------ hostile deltas
def _rewrite(folder, tensors, manifest):
    """Replace a saved delta's files by ``tensors`` and ``manifest`` (a forger keeping both files consistent)."""
    from safetensors.torch import save_file

    save_file(tensors, str(folder / TENSORS_FILE), metadata={"format": "erasekit-delta", "delta_id": manifest["delta_id"]})
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest))


def _poisoned(delta, value):
    """``delta`` with one value of its first tensor replaced by ``value``, every hash and the id made consistent."""
    from erasekit.models.delta import TensorRecord, _delta_id

    tensors = {n: t.clone() for n, t in delta.tensors.items()}
    first = delta.names[0]
    tensors[first].view(-1)[0] = value
    records = [TensorRecord(**{**r.model_dump(), "new_sha256": fingerprint(tensors[r.name])})
               for r in delta.manifest.tensors]
    manifest = delta.manifest.model_copy(update={"tensors": records, "delta_id": _delta_id(records, None)})
    return WeightDelta(tensors=tensors, manifest=manifest)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_delta_refused_on_save_load_and_apply(base_and_delta, tmp_path, value):
    from erasekit.models.delta import NonFiniteDeltaError

    base, _, _, delta = base_and_delta
    bad = _poisoned(delta, value)
    with pytest.raises(NonFiniteDeltaError, match=bad.names[0]):
        bad.save(tmp_path / "nan")
    assert not (tmp_path / "nan").exists()  # refused before anything is written

    folder = delta.save(tmp_path / "forged")
    _rewrite(folder, bad.tensors, json.loads(bad.manifest.model_dump_json()))
    with pytest.raises(NonFiniteDeltaError, match="NaN/inf"):
        WeightDelta.load(folder)

    pipe = make_pipe()
    with pytest.raises(NonFiniteDeltaError):
        apply_delta(pipe, bad)
    assert_same_state(pipe, base)  # nothing was copied in


def test_delta_id_is_recomputed_from_the_records_on_load(base_and_delta, tmp_path):
    _, _, _, delta = base_and_delta
    folder = delta.save(tmp_path / "d")
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    tensors = dict(delta.tensors)
    extra = torch.zeros(3)  # an extra tensor added to both files, id left unchanged
    tensors["unet.conv_in.bias"] = extra
    manifest["tensors"].append({"name": "unet.conv_in.bias", "shape": [3], "dtype": "float32",
                                "base_sha256": "0" * 64, "new_sha256": fingerprint(extra)})
    _rewrite(folder, tensors, manifest)
    with pytest.raises(DeltaFormatError, match="hash to delta"):
        WeightDelta.load(folder)

    manifest = json.loads(delta.manifest.model_dump_json())
    manifest["parent"] = "f" * 16  # a parent claimed after the fact changes the id too
    _rewrite(folder, delta.tensors, manifest)
    with pytest.raises(DeltaFormatError, match="hash to delta"):
        WeightDelta.load(folder)


def test_empty_delta_refused_on_save_unless_allowed(tmp_path):
    from erasekit.models.delta import EmptyDeltaError

    pipe = make_pipe()
    originals = snapshot(pipe, kv_names(pipe))
    empty = WeightDelta.from_changes(pipe, originals, method="noop")  # nothing was edited
    assert empty.tensors == {}
    with pytest.raises(EmptyDeltaError, match="changes no weights"):
        empty.save(tmp_path / "empty")
    assert not (tmp_path / "empty").exists()
    empty.save(tmp_path / "allowed", allow_empty=True)
    assert WeightDelta.load(tmp_path / "allowed").tensors == {}
