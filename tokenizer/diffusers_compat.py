"""diffusers ``ModelMixin`` classes for the toolkit's model folders (needs diffusers: ``pip install diffusers``).

    from tokenizer.diffusers_compat import VidtokVAE, VidtokLatte
    vae = VidtokVAE.from_pretrained("./runs/my-vae").model        # the toolkit VideoVAE, weights loaded by diffusers
    latte = VidtokLatte.from_pretrained("./runs/my-latte").model

The classes are the ``_class_name`` of the folders ``save_pretrained`` writes (:mod:`tokenizer.pretrained`).
Each wraps the toolkit model under the very same state-dict names: the wrapper shares the model's parameter,
buffer and child-module tables, so whatever diffusers loads into the wrapper (meta-device init included) is
in the model. The toolkit itself never imports this module.
"""
from __future__ import annotations

from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn

from . import pretrained

_SHARED_TABLES = ("_parameters", "_buffers", "_non_persistent_buffers_set", "_modules")


class _Wrapper(ModelMixin, ConfigMixin):
    config_name = pretrained.CONFIG_JSON

    def _share(self, model: nn.Module) -> None:
        for table in _SHARED_TABLES:  # one set of tensors, two views: diffusers' and the toolkit's
            self.__dict__[table] = model.__dict__[table]
        self.__dict__["_model"] = model  # not a child module: no "model." prefix in the state dict

    @property
    def model(self) -> nn.Module:
        return self.__dict__["_model"]

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)


class VidtokVAE(_Wrapper):
    """A toolkit video VAE (``.model``) as a diffusers model; ``encode`` / ``decode`` are the VAE's."""

    @register_to_config
    def __init__(self, name: str = "plain-tiny", build_args: dict | None = None):
        super().__init__()
        from .config import from_dict
        from .registry import get_preset

        cls, _ = get_preset(name)
        self._share(cls(from_dict(cls.config_class, build_args or {}, source="config.json"), name=name))

    def encode(self, video):
        return self.model.encode(video)

    def decode(self, z):
        return self.model.decode(z)


class VidtokLatte(_Wrapper):
    """A Latte model (``.model``) as a diffusers model; ``forward(x, t, y)`` is Latte's."""

    @register_to_config
    def __init__(self, name: str | None = None, build_args: dict | None = None):
        super().__init__()
        from diffusion.latte import Latte

        self._share(Latte(**(build_args or {})))
