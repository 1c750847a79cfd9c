"""Diffusers-style model folders: toolkit VAEs and Latte save as config.json + diffusion_pytorch_model.safetensors
+ a model card, load back bit-exactly with the toolkit and through diffusers' ModelMixin.from_pretrained, and the
older config.yaml + model.safetensors folders still load."""
import json

import pytest
import torch
import yaml

from diffusion import build_latte
from diffusion.latte import Latte
from tokenizer import build_vae, load_vae
from tokenizer.io import save_weights
from tokenizer.pretrained import CARD, CONFIG_JSON, WEIGHTS

diffusers = pytest.importorskip("diffusers")


def _vae(seed=0):
    torch.manual_seed(seed)
    vae = build_vae("plain-tiny").eval()
    with torch.no_grad():
        for p in vae.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return vae


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(1)
    return torch.rand(1, 3, 5, 16, 16) * 2 - 1


def test_vae_folder_round_trip_and_card(tmp_path, clip):
    vae = _vae()
    folder = vae.save_pretrained(tmp_path / "vae", training="8 steps on the bundled videos", metrics={"PSNR": 21.5})
    assert sorted(p.name for p in folder.iterdir()) == sorted([CONFIG_JSON, WEIGHTS, CARD])
    config = diffusers.AutoencoderKL.load_config(str(folder))  # diffusers' own config reader
    assert config["_class_name"] == "VidtokVAE" and config["name"] == "plain-tiny"
    loaded = load_vae(folder)
    assert loaded.fingerprint() == vae.fingerprint() and loaded.config == vae.config
    with torch.no_grad():
        assert torch.equal(loaded.decode(loaded.encode(clip).mode()), vae.decode(vae.encode(clip).mode()))
    card = (folder / CARD).read_text()
    assert "plain-tiny" in card and "8 steps on the bundled videos" in card and "| PSNR | 21.5 |" in card
    assert vae.fingerprint() in card
    # a re-save keeps what the card knew
    loaded.save_pretrained(tmp_path / "again")
    assert "| PSNR | 21.5 |" in (tmp_path / "again" / CARD).read_text()


def test_vae_loads_through_diffusers_model_mixin(tmp_path, clip):
    from tokenizer.diffusers_compat import VidtokVAE

    vae = _vae(seed=2)
    folder = vae.save_pretrained(tmp_path / "vae")
    torch.manual_seed(5)  # whatever diffusers initialises must be overwritten by the file
    wrapped = VidtokVAE.from_pretrained(str(folder))
    assert isinstance(wrapped, diffusers.ModelMixin)
    assert set(wrapped.state_dict()) == set(vae.state_dict())  # the same names, no prefix
    assert wrapped.model.fingerprint() == vae.fingerprint()
    with torch.no_grad():
        assert torch.equal(wrapped.decode(wrapped.encode(clip).mode()), vae.decode(vae.encode(clip).mode()))
    # diffusers' save_pretrained of the wrapper writes a folder the toolkit loads
    wrapped.save_pretrained(str(tmp_path / "from_diffusers"))
    assert load_vae(tmp_path / "from_diffusers").fingerprint() == vae.fingerprint()


def test_latent_dist_is_the_diffusers_posterior(clip):
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    vae = _vae()
    with torch.no_grad():
        posterior = vae.encode(clip)
        ref = DiagonalGaussianDistribution(torch.cat([posterior.mean, posterior.logvar], 1))
        dist = posterior.latent_dist
        assert torch.equal(dist.mode(), ref.mode()) and torch.allclose(dist.std, ref.std)
        assert torch.allclose(dist.kl(), ref.kl().flatten(1).sum(1))  # diffusers sums over dims 1-3 (images)
        g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
        assert torch.allclose(dist.sample(g1), ref.sample(g2))


def test_old_folder_still_loads(tmp_path, clip):
    vae = _vae(seed=4)
    old = tmp_path / "old"
    record = {"name": vae.name, "config": json.loads(json.dumps(vae.describe()["config"]))}
    save_weights(vae.state_dict(), old / "model.safetensors")  # no metadata: config.yaml is the only record
    (old / "config.yaml").write_text(yaml.safe_dump(record))
    loaded = load_vae(old)
    assert loaded.fingerprint() == vae.fingerprint()


def test_an_image_vae_folder_is_the_framewise_sd_vae_not_a_toolkit_folder(tmp_path):
    from diffusers import AutoencoderKL

    from tokenizer.base import VideoVAE
    from tokenizer.models.sd import SDVAE

    AutoencoderKL(block_out_channels=(8,), norm_num_groups=8, latent_channels=4).save_pretrained(tmp_path / "sd")
    assert isinstance(load_vae(tmp_path / "sd"), SDVAE)  # Latte's tokenizer (issue 15), frame by frame
    with pytest.raises(ValueError, match="AutoencoderKL"):  # the toolkit's own loader names what it found
        VideoVAE.load(tmp_path / "sd")
    toolkit = build_vae("plain-tiny").save_pretrained(tmp_path / "plain")  # config.json too, but a toolkit class
    assert not isinstance(load_vae(toolkit), SDVAE)


def test_latte_folder_round_trip_and_diffusers_load(tmp_path):
    from tokenizer.diffusers_compat import VidtokLatte

    torch.manual_seed(0)
    model = build_latte("Latte-tiny/2", in_channels=4, num_frames=3, input_size=8, num_classes=5).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    folder = model.save_pretrained(tmp_path / "latte", metrics={"FVD16": 123.4})
    x, t, y = torch.randn(2, 4, 3, 8, 8), torch.tensor([3, 700]), torch.tensor([1, 5])
    with torch.no_grad():
        want = model(x, t, y)
        loaded = Latte.from_pretrained(folder)
        assert loaded.preset == "Latte-tiny/2" and torch.equal(loaded(x, t, y), want)
        wrapped = VidtokLatte.from_pretrained(str(folder))
        assert torch.equal(wrapped(x, t, y), want)
    card = (folder / CARD).read_text()
    assert "Latte-tiny/2" in card and "5 classes" in card and "| FVD16 | 123.4 |" in card


@pytest.mark.parametrize("name,frames", [("plain-tiny", "1 + 4k (causal)"), ("vcvae-8x-tiny", "8k (in sequence)"),
                                         ("sd-tiny", "any")])
def test_model_card_states_the_frame_rule_of_its_compression(tmp_path, name, frames):
    card = (build_vae(name).save_pretrained(tmp_path / name) / CARD).read_text()
    assert frames in card
