"""ESD-x / ESD-u: deltas stay in their scopes and the pipeline is left bit-exact."""

import pytest
import torch

from erasekit.concepts.spec import ConceptSpec
from erasekit.methods.base import get_method
from erasekit.methods.esd import Config, esd_target
from erasekit.models.scopes import get_scope
from tiny_helpers import snapshot_weights

CONCEPT = ConceptSpec(name="cat", kind="object", targets=["cat", "kitten"], anchor="dog",
                      templates=["a photo of {}", "{} in a garden"])


pytestmark = pytest.mark.usefixtures("one_thread")




@pytest.mark.parametrize("method,scope", [("esd-x", "cross_attn"), ("esd-u", "non_cross_attn")])
def test_delta_in_scope_and_pipe_unchanged(pipe, method, scope):
    before = snapshot_weights(pipe)
    cfg = Config(iterations=3, n_steps=4, lr=1e-3, progress=False)
    delta = get_method(method).erase(pipe, CONCEPT, cfg)
    assert delta.names and set(delta.names) <= set(get_scope(scope).select(pipe.unet, prefix="unet."))
    in_attn2 = [".attn2." in n for n in delta.names]
    assert all(in_attn2) if method == "esd-x" else not any(in_attn2)
    assert delta.manifest.method == method and delta.manifest.metrics["iterations"] == 3
    after = snapshot_weights(pipe)
    assert all(torch.equal(before[n], after[n]) for n in before)


def test_same_seed_same_delta_and_presets(pipe):
    cfg = Config(iterations=2, n_steps=4, lr=1e-3, progress=False)
    a = get_method("esd-x").erase(pipe, CONCEPT, cfg)
    b = get_method("esd-x").erase(pipe, CONCEPT, cfg)
    assert a.delta_id == b.delta_id
    assert Config().iterations == 1000 and Config().lr == 1e-5 and Config().n_steps == 50
    assert Config.preset("shapes").n_steps == 25


def test_negative_guidance_target():
    c, u = torch.tensor([3.0]), torch.tensor([1.0])
    assert torch.equal(esd_target(c, u, 1.0), torch.tensor([-1.0]))
