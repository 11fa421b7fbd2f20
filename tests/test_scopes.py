"""Parameter scopes select exactly the intended tensors on every tiny UNet family."""

import pytest
import torch
from diffusers.models.attention_processor import Attention
from torch import nn

from erasekit.models.scopes import (
    UnknownScopeError,
    cross_attention_layers,
    get_scope,
    list_scopes,
    self_attention_layers,
)
from erasekit.models.tiny import FAMILIES, tiny_unet, tiny_unet_config, tiny_unet_inputs

N_CROSS = {"sd1": 4, "sd2": 7, "sdxl": 8}


@pytest.fixture(scope="module", params=FAMILIES)
def unet(request):
    return request.param, tiny_unet(request.param)


def _under(params, layer_names):
    return {n for n in params if any(n.startswith(layer + ".") for layer in layer_names)}


def test_tiny_configs_follow_their_family():
    assert tiny_unet_config("sd2")["use_linear_projection"] is True
    assert isinstance(tiny_unet_config("sd2")["attention_head_dim"], tuple)
    xl = tiny_unet_config("sdxl")
    assert xl["addition_embed_type"] == "text_time" and xl["transformer_layers_per_block"] == (1, 2)
    with pytest.raises(ValueError):
        tiny_unet_config("sd3")


def test_forward_runs(unet):
    family, model = unet
    with torch.no_grad():
        out = model(**tiny_unet_inputs(family)).sample
    assert out.shape == (1, 4, 8, 8)


def test_attention_layer_discovery(unet):
    family, model = unet
    cross, selfs = cross_attention_layers(model), self_attention_layers(model)
    assert len(cross) == N_CROSS[family] and len(selfs) == N_CROSS[family]
    assert all(n.endswith(".attn2") for n in cross) and all(n.endswith(".attn1") for n in selfs)
    assert set(cross) == {n for n, _ in model.named_modules() if n.endswith("attn2")}


def test_scopes_select_exact_sets(unet):
    family, model = unet
    params = dict(model.named_parameters())
    cross, selfs = list(cross_attention_layers(model)), list(self_attention_layers(model))
    sel = {name: set(get_scope(name).select(model)) for name in list_scopes()}

    kv = {f"{c}.{p}.weight" for c in cross for p in ("to_k", "to_v")}
    q = {f"{c}.to_q.weight" for c in cross}
    assert sel["cross_attn_kv"] == kv and len(kv) == 2 * N_CROSS[family]
    assert sel["cross_attn_q"] == q
    assert sel["cross_attn_qkv"] == kv | q
    assert sel["cross_attn"] == _under(params, cross) and sel["cross_attn"] > kv | q
    assert sel["self_attn"] == _under(params, selfs)
    assert sel["visual"] == sel["self_attn"] | q
    assert sel["all"] == set(params)

    owners = dict(model.named_modules())
    expected_u = {
        n for n in params
        if isinstance(owners[n.rsplit(".", 1)[0]], (nn.Linear, nn.Conv2d)) and ".attn2." not in n
    }
    assert sel["non_cross_attn"] == expected_u
    assert not sel["non_cross_attn"] & sel["cross_attn"]
    assert any(n.endswith(".bias") for n in sel["non_cross_attn"])
    assert not any("norm" in n for n in sel["non_cross_attn"])  # norms are not Linear/Conv
    assert {"conv_in.weight", "conv_out.bias", "time_embedding.linear_1.weight"} <= sel["non_cross_attn"]


def test_select_returns_live_parameters_and_modules(unet):
    _, model = unet
    scope = get_scope("cross_attn_kv")
    selected = scope.select(model, prefix="unet.")
    assert all(n.startswith("unet.") for n in selected)
    live = dict(model.named_parameters())
    assert all(p is live[n[len("unet."):]] for n, p in selected.items())
    mods = scope.modules(model)
    assert len(mods) == len(selected)
    assert all(isinstance(m, nn.Linear) and n.rsplit(".", 1)[1] in ("to_k", "to_v") for n, m in mods.items())
    assert scope.count(model) == sum(p.numel() for p in selected.values())


def test_cross_attention_found_by_structure_not_name():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.reads_text = Attention(query_dim=8, cross_attention_dim=4, heads=2, dim_head=4)
            self.mixes_pixels = Attention(query_dim=8, heads=2, dim_head=4)

    model = Block()
    assert list(cross_attention_layers(model)) == ["reads_text"]
    assert list(self_attention_layers(model)) == ["mixes_pixels"]
    assert set(get_scope("cross_attn_kv").select(model)) == {"reads_text.to_k.weight", "reads_text.to_v.weight"}


def test_unknown_scope_lists_close_matches():
    with pytest.raises(UnknownScopeError) as info:
        get_scope("cross_attn_k")
    assert isinstance(info.value, KeyError) and "cross_attn_kv" in str(info.value)
    assert get_scope(get_scope("all")) is get_scope("all")
