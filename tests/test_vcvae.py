"""VC-VAE initialisation from an image VAE, checked against diffusers' AutoencoderKL and its LDM key converter."""
import json

import pytest
import torch
from diffusers import AutoencoderKL
from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
from safetensors.torch import save_file

from tokenizer import build_vae, load_vae
from tokenizer.inflate import ImageVAEError, ldm_to_diffusers
from tokenizer.modules import GroupCausalConv3d, GroupOfOneConv3d
from tokenizer.modules import conv as conv_mod

BLOCKS = (8, 16, 16, 16)  # the tiny presets' widths; 4 levels like Flux


def _image_vae(seed=0, blocks=BLOCKS):
    """A random diffusers AutoencoderKL with the Flux VAE's block types, no quant convs, 16 latent channels."""
    torch.manual_seed(seed)
    vae = AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=blocks,
                        down_block_types=("DownEncoderBlock2D",) * len(blocks),
                        up_block_types=("UpDecoderBlock2D",) * len(blocks), layers_per_block=2, latent_channels=16,
                        norm_num_groups=2, use_quant_conv=False, use_post_quant_conv=False,
                        scaling_factor=0.5, shift_factor=0.25).eval()
    with torch.no_grad():  # move norms and biases off their default 1 / 0
        for p in vae.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return vae


@pytest.fixture(scope="module")
def image_vae_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("image-vae")
    vae = _image_vae()
    vae.save_pretrained(folder)
    return folder, vae


@pytest.fixture(scope="module")
def real_frame(sample_video_paths):
    import decord

    path = next(p for p in sample_video_paths if p.name == "carphone_pristine.mp4")
    frame = decord.VideoReader(str(path), width=64, height=64, num_threads=1).get_batch([10]).asnumpy()[0, :32, :48]
    return torch.from_numpy(frame.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1.0  # 1 3 32 48


@pytest.mark.parametrize("name,overrides", [("vcvae-tiny", {}), ("vcvae-8x-tiny", {}),
                                            ("vcvae-tiny", {"first_frame": "separate"}),
                                            ("vcvae-tiny", {"conv_type": "causal"}),
                                            ("vcvae-tiny", {"group_end_pad": "replicate"})],
                         ids=["4x", "8x", "4x-separate", "4x-causalconv", "4x-replicate-pad"])
def test_static_clip_reconstructs_like_the_image_vae(name, overrides, image_vae_dir, real_frame):
    """Sec. 3.2: after inflation a static clip decodes to the image VAE's per-frame reconstruction."""
    folder, image_vae = image_vae_dir
    model = build_vae(name, init_from=folder, layers_per_block=2, **overrides).eval()
    t = model.num_frames(2)
    with torch.no_grad():
        reference = image_vae.decode(image_vae.encode(real_frame).latent_dist.mode()).sample
        posterior = model.encode(real_frame[:, :, None].expand(-1, -1, t, -1, -1))
        video = model.decode(posterior.mode())
        image_latent = image_vae.encode(real_frame).latent_dist.mode()
    assert video.shape[2] == t
    torch.testing.assert_close(video, reference[:, :, None].expand_as(video), atol=1e-4, rtol=1e-4)
    # the first 16 latent channels are the image VAE's latent; the extra ones of the 8x model are zero
    torch.testing.assert_close(posterior.mean[:, :16], image_latent[:, :, None].expand(-1, -1, 2, -1, -1),
                               atol=1e-4, rtol=1e-4)
    if model.latent_channels == 32:
        assert posterior.mean[:, 16:].abs().max() == 0
        assert model.decoder.conv_in.weight[:, 16:].abs().max() == 0
    # the latent normalisation is the image VAE's
    assert (model.config.scaling_factor, model.config.shift_factor) == (0.5, 0.25)


def test_group_end_pad_reaches_every_group_causal_conv():
    """``group_end_pad`` (the study's padding ablation) is set on every group causal conv; a wrong value is named."""
    model = build_vae("vcvae-tiny", group_end_pad="replicate")
    pads = {m.back_pad for m in model.modules() if isinstance(m, (GroupCausalConv3d, GroupOfOneConv3d))}
    assert pads == {"replicate"}
    with pytest.raises(ValueError, match="group_end_pad must be one of zeros, replicate"):
        build_vae("vcvae-tiny", group_end_pad="mirror")
    with pytest.raises(ValueError, match="needs conv_type='group_causal'"):
        build_vae("vcvae-tiny", group_end_pad="replicate", conv_type="causal")


def test_centre_and_tail_initialisation(image_vae_dir):
    folder, image_vae = image_vae_dir
    w2d = image_vae.state_dict()["encoder.down_blocks.1.resnets.0.conv1.weight"]
    for conv_type, tap in (("group_causal", 1), ("causal", 2)):
        model = build_vae("vcvae-tiny", init_from=folder, layers_per_block=2, conv_type=conv_type)
        w3d = model.encoder.down_blocks[1].resnets[0].conv1.weight
        assert isinstance(model.encoder.down_blocks[1].resnets[0].conv1, GroupCausalConv3d) == (tap == 1)
        assert torch.equal(w3d[:, :, tap], w2d)
        others = torch.cat([w3d[:, :, i] for i in range(3) if i != tap])
        assert others.abs().max() == 0  # every other tap is zero


def _diffusers_to_ldm(state, levels):
    """Test-side inverse naming (diffusers -> LDM / Flux ae.safetensors); checked against diffusers below."""
    out = {}
    for k, v in state.items():
        n = k.replace("mid_block.attentions.0.group_norm", "mid.attn_1.norm")
        for a, b in (("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out")):
            n = n.replace(f"mid_block.attentions.0.{a}.", f"mid.attn_1.{b}.")
        if ".mid.attn_1." in n and v.ndim == 2:
            v = v[:, :, None, None]  # Flux stores q, k, v, proj_out as 1x1 convs
        n = n.replace("mid_block.resnets.0", "mid.block_1").replace("mid_block.resnets.1", "mid.block_2")
        n = n.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
        n = n.replace("downsamplers.0", "downsample").replace("upsamplers.0", "upsample")
        if n.startswith("decoder.up_blocks."):
            i = int(n.split(".")[2])
            n = n.replace(f"decoder.up_blocks.{i}.", f"decoder.up.{levels - 1 - i}.", 1)
        n = n.replace("down_blocks.", "down.").replace(".resnets.", ".block.")
        out[n] = v
    return out


def test_flux_key_mapping_matches_diffusers_converter(image_vae_dir, tmp_path):
    folder, image_vae = image_vae_dir
    state = image_vae.state_dict()
    ldm = _diffusers_to_ldm(state, len(BLOCKS))
    assert "encoder.mid.attn_1.q.weight" in ldm and "decoder.up.0.block.2.conv1.weight" in ldm
    reference = convert_ldm_vae_checkpoint(ldm, dict(image_vae.config))  # diffusers' own LDM -> diffusers map
    assert set(reference) == set(state) and all(torch.equal(reference[k], state[k]) for k in state)
    ours = ldm_to_diffusers(ldm)
    assert set(ours) == set(reference) and all(torch.equal(ours[k], reference[k]) for k in reference)
    # initialising from an ae.safetensors file gives the same model as from the diffusers folder
    save_file({k: v.contiguous() for k, v in ldm.items()}, str(tmp_path / "ae.safetensors"))
    from_file = build_vae("vcvae-tiny", init_from=tmp_path / "ae.safetensors", layers_per_block=2)
    from_dir = build_vae("vcvae-tiny", init_from=folder, layers_per_block=2)
    assert from_file.fingerprint() == from_dir.fingerprint()
    assert (from_file.config.scaling_factor, from_file.config.shift_factor) == (0.3611, 0.1159)  # Flux's


def test_missing_file_names_what_to_download(tmp_path):
    with pytest.raises(FileNotFoundError, match="ae.safetensors.*black-forest-labs"):
        build_vae("vcvae-tiny", init_from=tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        build_vae("vcvae-tiny", init_from=tmp_path / "empty")


def test_missing_unused_and_mismatched_keys_are_listed(image_vae_dir, tmp_path):
    folder, _ = image_vae_dir
    with pytest.raises(ImageVAEError) as err:  # layers_per_block 1 vs the image VAE's 2
        build_vae("vcvae-tiny", init_from=folder, layers_per_block=1)
    assert "not used by the video VAE" in str(err.value) and "down_blocks.0.resnets.1.conv1.weight" in str(err.value)
    state = {k: v.clone() for k, v in _image_vae().state_dict().items()}
    del state["decoder.mid_block.attentions.0.to_k.bias"]
    state["encoder.conv_in.weight"] = torch.zeros(8, 3, 5, 5)
    save_file(state, str(tmp_path / "vae.safetensors"))
    with pytest.raises(ImageVAEError) as err:
        build_vae("vcvae-tiny", init_from=tmp_path / "vae.safetensors", layers_per_block=2)
    msg = str(err.value)
    assert "missing in the image VAE (1): decoder.mid_block.attentions.0.to_k.bias" in msg
    assert "shape mismatch (1): encoder.conv_in.weight: image (8, 3, 5, 5) vs video (8, 3, 3, 3, 3)" in msg
    wide = tmp_path / "wide"
    _image_vae(blocks=(8, 16, 16, 32)).save_pretrained(wide)
    assert json.loads((wide / "config.json").read_text())["block_out_channels"] == [8, 16, 16, 32]
    with pytest.raises(ImageVAEError, match="shape mismatch"):
        build_vae("vcvae-tiny", init_from=wide, layers_per_block=2)


def test_inflated_model_round_trip(image_vae_dir, tmp_path):
    """An inflated VC-VAE saves and reloads bit-exactly, with the image VAE's latent normalisation."""
    from tokenizer import load_vae

    model = build_vae("vcvae-8x-tiny", init_from=image_vae_dir[0], layers_per_block=2)
    loaded = load_vae(model.save_pretrained(tmp_path / "vc"))
    assert loaded.fingerprint() == model.fingerprint() and loaded.config == model.config
    assert (loaded.scaling_factor, loaded.shift_factor) == (0.5, 0.25)


def test_plain_refuses_init_from(image_vae_dir):
    with pytest.raises(ValueError, match="cannot be initialised from an image VAE"):
        build_vae("plain-tiny", init_from=image_vae_dir[0])


def _group_sizes(coder):
    """{module name: group size} of the temporal convs built from a group-causal ConvSpec (1 = GroupOfOneConv3d)."""
    return {n: 1 if isinstance(m, GroupOfOneConv3d) else m.group_size if m.group_size > 1 else "dead future tap"
            for n, m in coder.named_modules() if isinstance(m, (GroupCausalConv3d, GroupOfOneConv3d))}


@pytest.mark.parametrize("name,sizes", [("vcvae-tiny", (4, 2, 1, 1)), ("vcvae-8x-tiny", (8, 4, 2, 1))])
def test_group_sizes_per_level(name, sizes):
    """A group holds the frames of one latent frame: 4 / 2 / 1 / 1 (8 / 4 / 2 / 1 at 8x) from the top level down;
    groups of one frame are causal k_t = 2 convs (no tap that only sees the zero pad)."""
    model = build_vae(name)
    enc, dec = _group_sizes(model.encoder), _group_sizes(model.decoder)
    for level, g in enumerate(sizes):
        found = {v for k, v in enc.items() if k.startswith(f"down_blocks.{level}.")} | \
                {v for k, v in dec.items() if k.startswith(f"up_blocks.{len(sizes) - 1 - level}.")}
        assert found == {g}, (level, found)
    assert enc["conv_in"] == dec["conv_out"] == sizes[0]
    latent_side = [v for k, v in {**enc, **{"d." + k: v for k, v in dec.items()}}.items()
                   if k.startswith(("mid_block", "conv_out", "d.mid_block", "d.conv_in"))]
    assert latent_side and set(latent_side) == {1}
    for m in model.modules():
        if isinstance(m, GroupOfOneConv3d):
            assert m.k_t == 2 and m.anchor == 1


def test_old_layout_checkpoint_loads_with_equal_outputs(monkeypatch, tmp_path, real_frame):
    """A checkpoint saved when groups of one frame were k_t = 3 group causal convs loads into the new layout
    (zero taps dropped, TDC's folded into the anchor) and gives the same latents and videos, with 2/3 of those
    convs' parameters."""
    monkeypatch.setattr(conv_mod, "LEAN_GROUPS_OF_ONE", False)
    torch.manual_seed(0)
    old = build_vae("vcvae-tiny").eval()
    with torch.no_grad():
        for p in old.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    old.save_pretrained(tmp_path / "old")
    monkeypatch.setattr(conv_mod, "LEAN_GROUPS_OF_ONE", True)
    new = load_vae(tmp_path / "old")
    assert not any(isinstance(m, GroupOfOneConv3d) for m in old.modules())
    ones = [m for m in new.modules() if isinstance(m, GroupOfOneConv3d)]
    assert ones and sum(p.numel() for p in old.parameters()) - sum(p.numel() for p in new.parameters()) == \
        sum(m.weight.numel() // 2 for m in ones)
    torch.manual_seed(1)
    clip = (real_frame[:, :, None] + 0.2 * torch.randn(1, 3, 8, 32, 48)).clamp(-1, 1)  # a moving clip
    with torch.no_grad():
        a, b = old.encode(clip, chunk_size=0), new.encode(clip, chunk_size=0)
        torch.testing.assert_close(b.mean, a.mean, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(new.decode(a.mean), old.decode(a.mean), atol=1e-5, rtol=1e-4)
