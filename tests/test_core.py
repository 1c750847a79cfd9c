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


def test_config_unknown_key_names_key_file_and_valid_keys(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("optim:\n  lrr: 0.5\n")
    with pytest.raises(ConfigError) as err:
        load_config(_Cfg, f)
    msg = str(err.value)
    assert "optim.lrr" in msg and str(f) in msg and "betas, lr" in msg


def test_config_wrong_type(tmp_path):
    with pytest.raises(ConfigError, match="steps"):
        load_config(_Cfg, None, ["steps=many"])


def test_fingerprint_depends_on_values_only():
    a = {"w": torch.arange(6.0).view(2, 3), "b": torch.zeros(3)}
    b = {"b": torch.zeros(3), "w": torch.arange(6.0).view(2, 3).t().contiguous().t()}
    assert state_dict_fingerprint(a) == state_dict_fingerprint(b)
    a["b"][0] = 1e-7
    assert state_dict_fingerprint(a) != state_dict_fingerprint(b)
