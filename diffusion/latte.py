"""Latte: a latent video diffusion transformer (Ma et al. 2024, "Latte: Latent Diffusion Transformer for Video
Generation"), variant 1 of the paper: spatial and temporal DiT blocks interleaved.

The model is a pure network: ``model(x, t, y) -> (eps, v)``; it knows nothing of noise schedules (those live in
``diffusion.gaussian_diffusion``) nor of samplers (``diffusion.samplers``).

Layout. The toolkit's layout is ``b c t h w``; the model takes and returns it. Inside, frames are patchified one by
one (``(b f) n d``, n = (h/p) * (w/p) tokens per frame), block 2i attends over the n tokens of one frame (spatial),
block 2i+1 over the f frames of one token position (temporal, ``(b n) f d``). The public Latte code takes
``b f c h w`` instead; only the edges differ, the state dict is the same.

State-dict names follow the public Latte checkpoints (``x_embedder.proj``, ``t_embedder.mlp.{0,2}``,
``y_embedder.embedding_table``, ``pos_embed``, ``temp_embed``, ``blocks.N.{attn.qkv, attn.proj, mlp.fc1, mlp.fc2,
adaLN_modulation.1}``, ``final_layer.{linear, adaLN_modulation.1}``), so the released UCF101 and SkyTimelapse
weights load with ``strict=True``. ``pos_embed`` and ``temp_embed`` are fixed sin-cos tables: buffers here (frozen
parameters in the public code), saved in the state dict under the same names and shapes.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from einops import rearrange
from timm.layers import Mlp, PatchEmbed
from torch import nn
from torch.utils.checkpoint import checkpoint

from tokenizer import pretrained

ATTENTION_BACKENDS = ("sdpa", "math", "xformers")


def xformers_available() -> bool:
    try:
        import xformers.ops  # noqa: F401
    except ImportError:
        return False
    return True


def _check_backend(name: str) -> str:
    if name not in ATTENTION_BACKENDS:
        raise ValueError(f"unknown attention backend '{name}': choose one of {', '.join(ATTENTION_BACKENDS)}")
    if name == "xformers" and not xformers_available():
        raise ValueError("attention backend 'xformers' needs the xformers package (pip install xformers, or "
                         "pip install '.[xformers]'); 'sdpa' uses torch's fused kernels without it")
    return name


# --------------------------------------------------------------------------------------- fixed sin-cos tables

def sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    """(m,) positions -> (m, dim) table [sin(pos w_k) | cos(pos w_k)], w_k = 10000^(-k / (dim/2)) (Transformer
    sinusoids, MAE's layout: all sines first)."""
    if dim % 2:
        raise ValueError(f"a sin-cos table needs an even width, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    angles = pos.double().reshape(-1, 1) * omega  # m (dim/2)
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_2d(dim: int, grid: int) -> torch.Tensor:
    """(grid * grid, dim) table for a square token grid in row-major order: the first half of the channels
    encodes the column (w) index, the second half the row (h) index (MAE / DiT / Latte)."""
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")  # (gh gw) each
    return torch.cat([sincos_1d(dim // 2, cols.flatten()), sincos_1d(dim // 2, rows.flatten())], dim=1)


# ---------------------------------------------------------------------------------------------- conditioning

class TimestepEmbedder(nn.Module):
    """Diffusion timestep -> hidden vector: a 256-d sinusoid, then Linear -> SiLU -> Linear (DiT)."""

    def __init__(self, hidden_size: int, frequency_size: int = 256):
        super().__init__()
        self.frequency_size = frequency_size
        self.mlp = nn.Sequential(nn.Linear(frequency_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))

    @staticmethod
    def sinusoid(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
        """(b,) timesteps (may be fractional) -> (b, dim) [cos(t f_k) | sin(t f_k)], f_k = max_period^(-k/half)."""
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t.float()[:, None] * freqs[None]  # b half
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        return F.pad(emb, (0, dim % 2))  # odd widths: one zero channel

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """t: (b,) -> (b, hidden)."""
        freq = self.sinusoid(t, self.frequency_size)
        return self.mlp(freq.to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """Class label -> hidden vector. Row ``num_classes`` is the null label of classifier-free guidance; during
    training each label is replaced by it with probability ``dropout_prob`` (0.1 in Latte)."""

    def __init__(self, num_classes: int, hidden_size: int, dropout_prob: float):
        super().__init__()
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob
        self.embedding_table = nn.Embedding(num_classes + 1, hidden_size)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """y: (b,) labels in [0, num_classes] -> (b, hidden)."""
        if self.training and self.dropout_prob > 0:
            drop = torch.rand(y.shape[0], device=y.device) < self.dropout_prob
            y = torch.where(drop, torch.full_like(y, self.num_classes), y)
        return self.embedding_table(y)


# --------------------------------------------------------------------------------------------------- blocks

class Attention(nn.Module):
    """Multi-head self-attention over the token axis, qkv in one Linear (public names ``qkv``, ``proj``).

    Backends: 'sdpa' (torch's scaled_dot_product_attention: flash / memory-efficient kernels where the device
    has them), 'math' (the explicit softmax(q k^T / sqrt(d)) v of the public code's default), 'xformers'
    (memory_efficient_attention, when installed). All compute the same function.
    """

    def __init__(self, dim: int, num_heads: int, backend: str = "sdpa"):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden size {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.backend = _check_backend(backend)
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, N, D) -> (B, N, D)."""
        if self.backend == "xformers":
            import xformers.ops

            q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three b n h d", three=3, h=self.num_heads)
            out = rearrange(xformers.ops.memory_efficient_attention(q, k, v), "b n h d -> b n (h d)")
            return self.proj(out)
        q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.num_heads)
        if self.backend == "sdpa":
            out = F.scaled_dot_product_attention(q, k, v)
        else:  # math
            attn = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5  # b h n n
            out = attn.softmax(dim=-1) @ v
        return self.proj(rearrange(out, "b h n d -> b n (h d)"))


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x * (1 + scale) + shift, scale/shift broadcast over tokens."""
    return x * (1 + scale) + shift


class LatteBlock(nn.Module):
    """A DiT block with adaLN-Zero: x + g1 * Attn(mod(LN(x))) ; x + g2 * MLP(mod(LN(x))), the six modulation
    vectors from SiLU -> Linear(c). Spatial or temporal only by which axis the caller puts in N.

    The block takes k sequences per sample, ``(b k) n d``, and the conditioning once per sample, ``b d``: the
    modulation is computed b times instead of b * k times (the public code repeats c first; same result).
    """

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0, attention: str = "sdpa"):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads, backend=attention)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio), act_layer=lambda: nn.GELU(approximate="tanh"))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """x: ((b k), n, d) tokens; c: (b, d) conditioning -> ((b k), n, d)."""
        b, n = c.shape[0], x.shape[1]
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(c)[:, None].chunk(6, dim=-1)  # b 1 d
        per_sample = lambda u: rearrange(u, "(b k) n d -> b (k n) d", b=b)  # noqa: E731  (modulation broadcast)
        per_sequence = lambda u: rearrange(u, "b (k n) d -> (b k) n d", n=n)  # noqa: E731  (attention layout)
        h = per_sequence(modulate(per_sample(self.norm1(x)), shift1, scale1))
        x = x + per_sequence(gate1 * per_sample(self.attn(h)))
        h = modulate(per_sample(self.norm2(x)), shift2, scale2)
        return x + per_sequence(gate2 * self.mlp(h))


class FinalLayer(nn.Module):
    """adaLN shift/scale (no gate), then Linear to p * p * out_channels per token."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """x: ((b k), n, d); c: (b, d) -> ((b k), n, p*p*out)."""
        b, n = c.shape[0], x.shape[1]
        shift, scale = self.adaLN_modulation(c)[:, None].chunk(2, dim=-1)  # b 1 d
        h = modulate(rearrange(self.norm_final(x), "(b k) n d -> b (k n) d", b=b), shift, scale)
        return self.linear(rearrange(h, "b (k n) d -> (b k) n d", n=n))


# ---------------------------------------------------------------------------------------------------- model

class Latte(nn.Module):
    """Latte with interleaved spatial / temporal blocks (paper variant 1), adaLN-Zero conditioning on the timestep
    and, if ``num_classes > 0``, a class label.

    Output channels: ``2 * in_channels`` with ``learn_sigma`` (eps, then the variance interpolation v of
    IDDPM's learned range), else ``in_channels``.
    """

    def __init__(self, input_size: int = 32, patch_size: int = 2, in_channels: int = 4, hidden_size: int = 1152,
                 depth: int = 28, num_heads: int = 16, mlp_ratio: float = 4.0, num_frames: int = 16,
                 num_classes: int = 0, class_dropout_prob: float = 0.1, learn_sigma: bool = True,
                 attention: str = "sdpa", gradient_checkpointing: bool = False):
        super().__init__()
        if depth % 2:
            raise ValueError(f"Latte depth must be even (spatial + temporal pairs), got {depth}")
        if input_size % patch_size:
            raise ValueError(f"latent size {input_size} is not divisible by the patch size {patch_size}")
        if hidden_size % 4:
            raise ValueError(f"hidden size {hidden_size} must be divisible by 4 (2D sin-cos position table)")
        self.config = dict(input_size=input_size, patch_size=patch_size, in_channels=in_channels,
                           hidden_size=hidden_size, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
                           num_frames=num_frames, num_classes=num_classes, class_dropout_prob=class_dropout_prob,
                           learn_sigma=learn_sigma)
        self.input_size, self.patch_size, self.in_channels = input_size, patch_size, in_channels
        self.num_frames, self.num_classes, self.learn_sigma = num_frames, num_classes, learn_sigma
        self.out_channels = 2 * in_channels if learn_sigma else in_channels
        self.gradient_checkpointing = gradient_checkpointing
        grid = input_size // patch_size

        self.x_embedder = PatchEmbed(input_size, patch_size, in_channels, hidden_size, bias=True)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size, class_dropout_prob) if num_classes > 0 else None
        # fixed sin-cos tables (buffers: saved under the public names, never trained)
        self.register_buffer("pos_embed", sincos_2d(hidden_size, grid).float()[None])  # 1 n d
        self.register_buffer("temp_embed", sincos_1d(hidden_size, torch.arange(num_frames)).float()[None])  # 1 f d
        self.blocks = nn.ModuleList(LatteBlock(hidden_size, num_heads, mlp_ratio, attention) for _ in range(depth))
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        # every Linear: xavier-uniform weights, zero bias (ViT / DiT)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        # the patch embedding is a Linear over a flattened patch: xavier on its (d, c*p*p) view
        w = self.x_embedder.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        # label table and timestep MLP: small normal (DiT)
        if self.y_embedder is not None:
            nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        # adaLN-Zero: zero modulation makes every block the identity at the start (gates 0)
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        # zero final modulation and output projection: the untrained model predicts exactly 0
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    # --- switches (per instance; nothing global) -----------------------------------------------------------
    @property
    def null_label(self) -> Optional[int]:
        """The label of the classifier-free-guidance null row (None for an unconditional model)."""
        return self.num_classes if self.num_classes > 0 else None

    def set_attention_backend(self, name: str) -> "Latte":
        name = _check_backend(name)
        for block in self.blocks:
            block.attn.backend = name
        return self

    def set_gradient_checkpointing(self, enabled: bool = True) -> "Latte":
        self.gradient_checkpointing = enabled
        return self

    # --- forward --------------------------------------------------------------------------------------------
    def _check_inputs(self, x: torch.Tensor, t: torch.Tensor, y: Optional[torch.Tensor]) -> None:
        b, c, f, h, w = x.shape
        if (c, f, h, w) != (self.in_channels, self.num_frames, self.input_size, self.input_size):
            raise ValueError(f"Latte expects latents (b, {self.in_channels}, {self.num_frames}, {self.input_size}, "
                             f"{self.input_size}) (b c t h w), got {tuple(x.shape)}")
        if t.shape != (b,):
            raise ValueError(f"timesteps must have shape ({b},), got {tuple(t.shape)}")
        if self.y_embedder is None and y is not None:
            raise ValueError("this Latte model is unconditional (num_classes=0) but class labels were given")
        if self.y_embedder is not None and (y is None or y.shape != (b,)):
            raise ValueError(f"this Latte model is class-conditional ({self.num_classes} classes): pass y of shape "
                             f"({b},), with label {self.num_classes} for 'no class'")

    def _block(self, i: int, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(self.blocks[i], x, c, use_reentrant=False)
        return self.blocks[i](x, c)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x: (b, c, t, h, w) noisy latent video; t: (b,) timesteps; y: (b,) class labels (conditional models)
        -> (b, out_channels, t, h, w): eps in the first c channels, then (learn_sigma) the variance value v."""
        self._check_inputs(x, t, y)
        b, f = x.shape[0], x.shape[2]
        p, g = self.patch_size, self.input_size // self.patch_size
        x = self.x_embedder(rearrange(x, "b c f h w -> (b f) c h w")) + self.pos_embed  # (b f) n d
        c = self.t_embedder(t)  # b d
        if self.y_embedder is not None:
            c = c + self.y_embedder(y)
        for i in range(0, len(self.blocks), 2):
            x = self._block(i, x, c)  # spatial: the n tokens of one frame
            x = rearrange(x, "(b f) n d -> (b n) f d", b=b)
            if i == 0:
                x = x + self.temp_embed  # temporal positions, once, after the first spatial block
            x = self._block(i + 1, x, c)  # temporal: the f frames of one token position
            x = rearrange(x, "(b n) f d -> (b f) n d", b=b)
        x = self.final_layer(x, c)  # (b f) n (p p c)
        return rearrange(x, "(b f) (gh gw) (p q c) -> b c f (gh p) (gw q)", b=b, gh=g, p=p, q=p)

    # --- persistence (a diffusers-style folder, see tokenizer.pretrained) --------------------------------------
    def save_pretrained(self, folder: str | Path, name: str | None = None, training: str | None = None,
                        metrics: dict | None = None) -> Path:
        """``config.json`` (the build arguments), ``diffusion_pytorch_model.safetensors`` and a model card
        ``README.md``; ``name`` is the preset it was built from, ``training`` / ``metrics`` go on the card."""
        card = pretrained.merge_card(getattr(self, "card", None), training, metrics)
        name = name or getattr(self, "preset", None)
        card["usage"] = ["from diffusion.latte import Latte", f'model = Latte.from_pretrained("{Path(folder).name}")',
                         "# or, through diffusers:", "from tokenizer.diffusers_compat import VidtokLatte",
                         f'model = VidtokLatte.from_pretrained("{Path(folder).name}").model']
        cfg = self.config
        facts = {"preset": f"`{name}`" if name else "not recorded",
                 "parameters": f"{sum(p.numel() for p in self.parameters()):,}",
                 "depth / hidden / heads": f"{cfg['depth']} / {cfg['hidden_size']} / {cfg['num_heads']}",
                 "latent input (c, t, h, w)": (f"({cfg['in_channels']}, {cfg['num_frames']}, {cfg['input_size']}, "
                                               f"{cfg['input_size']})"),
                 "patch size": cfg["patch_size"],
                 "conditioning": f"{cfg['num_classes']} classes" if cfg["num_classes"] else "unconditional",
                 "output": "eps + learned variance (IDDPM)" if cfg["learn_sigma"] else "eps"}
        text = pretrained.model_card(f"{name or 'Latte'}: a vidtok-lab Latte model",
                                     "A Latte latent video diffusion transformer (Ma et al. 2024, variant 1: "
                                     "interleaved spatial / temporal blocks), public Latte state-dict names.",
                                     facts, card)
        self.card, self.preset = card, name
        return pretrained.save_folder(folder, self.state_dict(), pretrained.LATTE_CLASS, name, dict(cfg), card,
                                      text)

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: str = "cpu") -> "Latte":
        state, config = pretrained.load_folder(folder, pretrained.LATTE_CLASS, device=device)
        model = cls(**config["build_args"])
        model.load_state_dict(state, strict=True)
        model.card, model.preset = config.get(pretrained.CARD_KEY) or {}, config.get("name")
        return model.to(device).eval()

    # --- cost -----------------------------------------------------------------------------------------------
    def flops(self, batch: int = 1) -> int:
        """Forward FLOPs (2 per multiply-add) for ``batch`` clips, counted by ``torch.utils.flop_counter`` on a
        twin built on the meta device (shapes only, nothing computed); attention is counted as its two matmuls
        (the math backend). Training costs about 3x this."""
        from torch.utils.flop_counter import FlopCounterMode

        with torch.device("meta"):
            twin = Latte(**self.config, attention="math").eval()
            x = torch.empty(batch, self.in_channels, self.num_frames, self.input_size, self.input_size)
            t = torch.zeros(batch, dtype=torch.long)
            y = torch.zeros(batch, dtype=torch.long) if self.num_classes > 0 else None
        with FlopCounterMode(display=False) as counter:
            twin(x, t, y)
        return counter.get_total_flops()


# --------------------------------------------------------------------------------------------------- presets

LATTE_PRESETS: dict[str, dict] = {}
for _size, (_depth, _hidden, _heads) in {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16),
                                         "XL": (28, 1152, 16)}.items():
    for _patch in (2, 4, 8):
        LATTE_PRESETS[f"Latte-{_size}/{_patch}"] = dict(depth=_depth, hidden_size=_hidden, num_heads=_heads,
                                                        patch_size=_patch)
LATTE_PRESETS["Latte-tiny/2"] = dict(depth=4, hidden_size=64, num_heads=4, patch_size=2)  # tests and the demo
LATTE_NAMES = tuple(LATTE_PRESETS)


def build_latte(name: str, **kwargs) -> Latte:
    """A Latte model by preset name, e.g. ``build_latte("Latte-XL/2", in_channels=16, num_classes=101,
    num_frames=4, input_size=32)``. Keyword arguments set the data-dependent fields (in_channels, num_frames,
    input_size, num_classes, learn_sigma, class_dropout_prob) and switches (attention, gradient_checkpointing);
    they may also override a preset's width or depth."""
    if name not in LATTE_PRESETS:
        raise KeyError(f"unknown Latte preset '{name}': choose one of {', '.join(LATTE_NAMES)}")
    model = Latte(**{**LATTE_PRESETS[name], **kwargs})
    model.preset = name
    return model
