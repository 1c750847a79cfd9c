"""The shared core: typed configs, the VAE frame rules, fingerprints."""
from dataclasses import dataclass, field

import pytest
import torch

from tokenizer.config import ConfigError, load_config
from tokenizer.io import state_dict_fingerprint


@dataclass
class _Optim:
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)


@dataclass
class _Cfg:
    name: str = "x"
    steps: int = 10
    optim: _Optim = field(default_factory=_Optim)


def test_config_yaml_and_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("steps: 5\noptim:\n  lr: 0.5\n")
    cfg = load_config(_Cfg, f, ["name=y", "optim.betas=[0.5,0.9]"])
    assert (cfg.name, cfg.steps, cfg.optim.lr, tuple(cfg.optim.betas)) == ("y", 5, 0.5, (0.5, 0.9))


@pytest.mark.parametrize("text,what", [("optim:\n  lrr: 0.5\n", "unknown key 'optim.lrr'"),
                                       ("optim:\n  lr: fast\n", "invalid value 'optim.lr'")])
def test_config_errors_name_key_file_and_valid_keys(tmp_path, text, what):
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(_Cfg, f)
    msg = str(err.value)
    assert what in msg and str(f) in msg and "betas, lr" in msg and "reference_type" not in msg


def test_override_errors_name_the_override_and_valid_keys():
    with pytest.raises(ConfigError, match=r"(?s)'steps'.*override 'steps=many'.*name, optim, steps"):
        load_config(_Cfg, None, ["steps=many"])


def test_nested_value_checks_name_the_full_key_and_where_it_was_set(tmp_path):
    """A section's own check (here the data config's, inside a training config) reports the key from the top and
    the file or override that set the value; several-field checks given as ``validate`` get the same treatment."""
    from tokenizer.training.vae_config import VAETrainConfig, validate

    f = tmp_path / "train.yaml"
    f.write_text("model: {name: plain-tiny}\ntrain: {run_dir: runs/x}\ndata:\n  crop: middle\n")
    with pytest.raises(ConfigError, match=rf"invalid value 'data.crop=middle': valid values are center, random "
                                          rf"\(set in {f}\)"):
        load_config(VAETrainConfig, f)
    with pytest.raises(ConfigError, match=r"'data.crop=middle'.*set in command-line override 'data.crop=middle'"):
        load_config(VAETrainConfig, f, ["data.crop=center", "data.crop=middle"])
    with pytest.raises(ConfigError, match=r"'train.ema_decay=1.5'.*set in command-line override"):
        load_config(VAETrainConfig, f, ["data.crop=center", "train.ema_decay=1.5"], validate=validate)


def test_a_yaml_that_is_not_a_mapping_is_a_clear_error(tmp_path):
    f = tmp_path / "list.yaml"
    f.write_text("- steps: 5\n")
    with pytest.raises(ConfigError, match=rf"{f} must hold a mapping of keys .* not a list"):
        load_config(_Cfg, f)


def test_fingerprint_depends_on_values_only():
    a = {"w": torch.arange(6.0).view(2, 3), "b": torch.zeros(3)}
    b = {"b": torch.zeros(3), "w": torch.arange(6.0).view(2, 3).t().contiguous().t()}
    assert state_dict_fingerprint(a) == state_dict_fingerprint(b)
    a["b"][0] = 1e-7
    assert state_dict_fingerprint(a) != state_dict_fingerprint(b)


def test_choice_fields_refuse_other_values_and_save_as_plain_strings(tmp_path):
    """Enum (Choice) fields: omegaconf itself refuses a value outside the set, naming the key and the choices; the
    value compares and formats as its string, and the saved config holds plain strings that load back."""
    import yaml

    from tokenizer.config import to_dict
    from tokenizer.training.vae_config import VAETrainConfig

    base = ["model.name=plain-tiny", "train.run_dir=x"]
    with pytest.raises(ConfigError, match=r"(?s)'train.sample_format'.*'webm', expected one of \[gif, mp4\]"):
        load_config(VAETrainConfig, None, [*base, "train.sample_format=webm"])
    cfg = load_config(VAETrainConfig, None, [*base, "train.sample_format=mp4", "train.stage=motion"])
    assert cfg.train.stage == "motion" and f"step.{cfg.train.sample_format}" == "step.mp4"
    saved = yaml.safe_dump(to_dict(cfg))  # plain strings: safe_dump refuses Enum objects
    (tmp_path / "c.yaml").write_text(saved)
    assert to_dict(load_config(VAETrainConfig, tmp_path / "c.yaml")) == to_dict(cfg)


def test_free_form_model_config_takes_preset_fields_from_yaml_and_overrides(tmp_path):
    """``model.config`` (dict[str, Any]: the preset's fields) accepts keys in the file and on the command line, while
    the typed sections around it still refuse unknown keys; a field the preset lacks is a config error of the
    trainer, not a traceback."""
    from tokenizer.training.vae_config import VAETrainConfig
    from tokenizer.training.vae_trainer import VAETrainer

    f = tmp_path / "train.yaml"
    f.write_text("model: {name: vcvae-tiny, config: {tdc: false}}\ntrain: {run_dir: x}\n")
    cfg = load_config(VAETrainConfig, f, ["model.config.first_frame=separate", "model.config={latent_channels: 8}"])
    assert cfg.model.config == {"tdc": False, "first_frame": "separate", "latent_channels": 8}
    with pytest.raises(ConfigError, match="unknown key 'model.confg'"):
        load_config(VAETrainConfig, f, ["model.confg.tdc=true"])
    bad = load_config(VAETrainConfig, f, ["model.config.tdcc=true", f"train.run_dir={tmp_path / 'run'}"])
    with pytest.raises(ConfigError, match="model.config: unknown config field.*tdcc"):
        VAETrainer(bad)
