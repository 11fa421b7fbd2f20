"""`--format kohya`: the LoRA key layout AUTOMATIC1111 and ComfyUI read, checked against names written
down from the original LDM/SGM module paths (SD-1.5 and SDXL), and on exported tiny pipelines."""

from types import SimpleNamespace

import pytest
import torch
from safetensors import safe_open

from erasekit.concepts.packs import get_concept
from erasekit.export.kohya import kohya_name
from erasekit.export.run import export_model
from erasekit.methods.base import get_method
from erasekit.models.delta import WeightDelta, resolve_tensors, revert_delta, snapshot
from erasekit.models.tiny import tiny_pipeline

# tiny pipelines run fastest on one thread (two crawl on a busy machine)
pytestmark = pytest.mark.usefixtures("one_thread")

SD15_UNET = {"layers_per_block": 2,
             "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]}
SDXL_UNET = {"layers_per_block": 2, "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"]}

# diffusers module -> kohya key stem, from the original checkpoints' module paths
# (SD-1.5 model.diffusion_model.*: input_blocks 1,2 / 4,5 / 7,8 hold transformers, output_blocks 3-11 too).
SD15_FIXTURE = {
    "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k": "lora_unet_input_blocks_1_1_transformer_blocks_0_attn2_to_k",
    "unet.down_blocks.0.attentions.1.transformer_blocks.0.attn2.to_v": "lora_unet_input_blocks_2_1_transformer_blocks_0_attn2_to_v",
    "unet.down_blocks.1.attentions.0.proj_in": "lora_unet_input_blocks_4_1_proj_in",
    "unet.down_blocks.2.attentions.1.transformer_blocks.0.attn1.to_out.0": "lora_unet_input_blocks_8_1_transformer_blocks_0_attn1_to_out_0",
    "unet.down_blocks.0.downsamplers.0.conv": "lora_unet_input_blocks_3_0_op",
    "unet.down_blocks.1.resnets.0.conv_shortcut": "lora_unet_input_blocks_4_0_skip_connection",
    "unet.down_blocks.3.resnets.1.conv2": "lora_unet_input_blocks_11_0_out_layers_3",
    "unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_k": "lora_unet_middle_block_1_transformer_blocks_0_attn2_to_k",
    "unet.mid_block.resnets.1.time_emb_proj": "lora_unet_middle_block_2_emb_layers_1",
    "unet.up_blocks.0.resnets.2.conv1": "lora_unet_output_blocks_2_0_in_layers_2",
    "unet.up_blocks.0.upsamplers.0.conv": "lora_unet_output_blocks_2_1_conv",
    "unet.up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k": "lora_unet_output_blocks_3_1_transformer_blocks_0_attn2_to_k",
    "unet.up_blocks.1.upsamplers.0.conv": "lora_unet_output_blocks_5_2_conv",
    "unet.up_blocks.3.attentions.2.transformer_blocks.0.ff.net.0.proj": "lora_unet_output_blocks_11_1_transformer_blocks_0_ff_net_0_proj",
    "unet.time_embedding.linear_1": "lora_unet_time_embed_0",
    "text_encoder.text_model.encoder.layers.11.self_attn.q_proj": "lora_te_text_model_encoder_layers_11_self_attn_q_proj",
    "text_encoder.encoder.layers.0.mlp.fc1": "lora_te_text_model_encoder_layers_0_mlp_fc1",  # flattened CLIPTextModel
}
SDXL_FIXTURE = {
    "unet.down_blocks.1.attentions.0.transformer_blocks.1.attn2.to_k": "lora_unet_input_blocks_4_1_transformer_blocks_1_attn2_to_k",
    "unet.down_blocks.2.attentions.1.transformer_blocks.9.attn2.to_v": "lora_unet_input_blocks_8_1_transformer_blocks_9_attn2_to_v",
    "unet.mid_block.attentions.0.transformer_blocks.5.attn1.to_q": "lora_unet_middle_block_1_transformer_blocks_5_attn1_to_q",
    "unet.up_blocks.0.attentions.2.transformer_blocks.0.attn2.to_k": "lora_unet_output_blocks_2_1_transformer_blocks_0_attn2_to_k",
    "unet.up_blocks.0.upsamplers.0.conv": "lora_unet_output_blocks_2_2_conv",
    "unet.up_blocks.1.attentions.0.proj_out": "lora_unet_output_blocks_3_1_proj_out",
    "unet.add_embedding.linear_2": "lora_unet_label_emb_0_2",
    "text_encoder.encoder.layers.3.self_attn.k_proj": "lora_te1_text_model_encoder_layers_3_self_attn_k_proj",
    "text_encoder_2.text_model.encoder.layers.31.mlp.fc2": "lora_te2_text_model_encoder_layers_31_mlp_fc2",
}


def _names(config, family):
    pipe = SimpleNamespace(unet=SimpleNamespace(config=config))
    return lambda module: kohya_name(pipe, module, family)


def test_names_follow_the_original_module_paths():
    sd15, sdxl = _names(SD15_UNET, "sd1"), _names(SDXL_UNET, "sdxl")
    assert {m: sd15(m) for m in SD15_FIXTURE} == SD15_FIXTURE
    assert {m: sdxl(m) for m in SDXL_FIXTURE} == SDXL_FIXTURE


def _read(path):
    with safe_open(str(path), framework="pt") as fh:
        return {k: fh.get_tensor(k) for k in fh.keys()}


def test_tiny_sd1_uce_export_has_the_a1111_keys_and_shapes(tmp_path):
    pipe = tiny_pipeline("sd1")
    info = get_method("uce")
    delta = info.erase(pipe, get_concept("circle"), info.config_cls.preset("sd"))
    base = snapshot(pipe, delta.names)
    export_model(pipe, delta, tmp_path / "no-circle", "kohya")
    state = _read(tmp_path / "no-circle" / "no-circle.safetensors")
    # tiny SD-1 (layers_per_block 1): transformers at input_blocks.1.1 (32 ch), middle_block.1 (64 ch),
    # output_blocks.2.1 and 3.1 (32 ch); text width 32
    layers = {"input_blocks_1_1": 32, "middle_block_1": 64, "output_blocks_2_1": 32, "output_blocks_3_1": 32}
    stems = {f"lora_unet_{blk}_transformer_blocks_0_attn2_{p}": ch for blk, ch in layers.items() for p in ("to_k", "to_v")}
    assert set(state) == {f"{s}.{part}" for s in stems for part in ("lora_down.weight", "lora_up.weight", "alpha")}
    for stem, channels in stems.items():
        down, up, alpha = state[f"{stem}.lora_down.weight"], state[f"{stem}.lora_up.weight"], state[f"{stem}.alpha"]
        r = down.shape[0]
        assert down.shape == (r, 32) and up.shape == (channels, r) and alpha.shape == () and float(alpha) == r
    # the kohya scaling alpha / rank = 1 rebuilds each difference
    for name in delta.names:
        diffusers_module = name.removeprefix("unet.").removesuffix(".weight")
        stem = kohya_name(pipe, "unet." + diffusers_module, "sd1")
        rebuilt = state[f"{stem}.lora_up.weight"] @ state[f"{stem}.lora_down.weight"]
        assert torch.allclose(rebuilt, delta.tensors[name] - base[name], atol=1e-6)


def test_sdxl_text_encoder_changes_get_te1_and_te2_prefixes(tmp_path):
    pipe = tiny_pipeline("sdxl")
    names = [next(f"{c}.{k}" for k, _ in getattr(pipe, c).named_parameters() if k.endswith("layers.1.self_attn.v_proj.weight"))
             for c in ("text_encoder", "text_encoder_2")]
    names.append(next(f"unet.{k}" for k, _ in pipe.unet.named_parameters() if k.endswith("attn2.to_k.weight")))
    before = snapshot(pipe, names)
    with torch.no_grad():
        for t in resolve_tensors(pipe, names).values():
            t.add_(0.01 * torch.randn(t.shape, generator=torch.Generator().manual_seed(0)))
    delta = WeightDelta.from_changes(pipe, before, method="test")
    revert_delta(pipe, delta)
    export_model(pipe, delta, tmp_path / "x", "kohya")
    stems = {k.rsplit(".", 2)[0] for k in _read(tmp_path / "x" / "x.safetensors") if k.endswith("lora_down.weight")}
    assert stems == {"lora_te1_text_model_encoder_layers_1_self_attn_v_proj",
                     "lora_te2_text_model_encoder_layers_1_self_attn_v_proj",
                     "lora_unet_input_blocks_3_1_transformer_blocks_0_attn2_to_k"}  # tiny SDXL: 1 layer per block
