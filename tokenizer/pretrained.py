"""Model folders in the diffusers layout, written and read without diffusers.

A folder saved by ``save_pretrained`` (toolkit VAEs and Latte)::

    config.json                          {"_class_name": "VidtokVAE" | "VidtokLatte", "_diffusers_version",
                                          "name": registry / preset name, "build_args": the config,
                                          "_vidtok_card": {"training": ..., "metrics": ...}}
    diffusion_pytorch_model.safetensors  the weights; the same {"name", "config"} record in the metadata
    README.md                            a model card: what it is, how it was trained, its metrics if known

This is the layout diffusers' ``ModelMixin.from_pretrained`` reads: ``tokenizer.diffusers_compat`` has the two
ModelMixin classes named by ``_class_name`` (they need diffusers; the toolkit's own loaders do not). Keys that
start with ``_`` are private to ConfigMixin, so diffusers ignores the card.
"""
from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from .io import load_weights, save_weights, write_json, write_text

CONFIG_JSON = "config.json"
WEIGHTS = "diffusion_pytorch_model.safetensors"
CARD = "README.md"
CARD_KEY = "_vidtok_card"
VAE_CLASS, LATTE_CLASS = "VidtokVAE", "VidtokLatte"
# the diffusers release whose folder layout this writes (recorded like diffusers records its own version)
LAYOUT_VERSION = "0.42.1"


def diffusers_version() -> str:
    try:
        return metadata.version("diffusers")
    except metadata.PackageNotFoundError:
        return LAYOUT_VERSION


def save_folder(folder: str | Path, state: dict[str, torch.Tensor], class_name: str, name: str | None,
                build_args: dict, card: dict, card_text: str) -> Path:
    """Write the three files of a model folder (each atomically; weights first, so a folder with a config.json
    always has its weights)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_weights(state, folder / WEIGHTS, config={"name": name, "config": build_args})
    write_json(folder / CONFIG_JSON, {"_class_name": class_name, "_diffusers_version": diffusers_version(),
                                      "name": name, "build_args": build_args, CARD_KEY: card})
    write_text(folder / CARD, card_text)
    return folder


def read_config(folder: str | Path, class_name: str) -> dict | None:
    """The config.json of a toolkit model folder of class ``class_name``; None if the folder has none (an older
    toolkit folder); a clear error if it holds another model (e.g. a diffusers AutoencoderKL)."""
    path = Path(folder) / CONFIG_JSON
    if not path.is_file():
        return None
    config = json.loads(path.read_text())
    found = config.get("_class_name")
    if found != class_name:
        raise ValueError(f"{path} describes a '{found}', not a toolkit {class_name} folder (saved by "
                         f"save_pretrained); an image VAE goes to build_vae(..., init_from=...)")
    return config


def load_folder(folder: str | Path, class_name: str, device: str = "cpu") -> tuple[dict, dict]:
    """(state dict, config.json) of a model folder."""
    config = read_config(folder, class_name)
    if config is None:
        raise FileNotFoundError(f"{folder} has no {CONFIG_JSON} (not a save_pretrained folder)")
    state, _ = load_weights(Path(folder) / WEIGHTS, device=device)
    return state, config


def model_card(title: str, summary: str, facts: dict[str, Any], card: dict) -> str:
    """A README.md model card: what the model is (``summary`` and ``facts``), how it was trained
    (``card["training"]``) and its metrics (``card["metrics"]``) when known."""
    lines = ["---", "library_name: vidtok-lab", "tags: [video, vidtok-lab]", "---", "", f"# {title}", "", summary,
             "", "| property | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in facts.items()]
    lines += ["", "## Training", "", card.get("training") or "Not recorded: untrained weights (the preset's "
                                                               "initialisation) unless stated elsewhere.", ""]
    metrics = card.get("metrics") or {}
    lines += ["## Metrics", ""]
    if metrics:
        lines += ["| metric | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in metrics.items()]
    else:
        lines.append("None recorded.")
    lines += ["", "## Loading", "", "```python", *card.get("usage", []), "```", ""]
    return "\n".join(lines)


def merge_card(old: dict | None, training: str | None, metrics: dict | None) -> dict:
    """The card of a re-saved model: new facts win, known ones are kept."""
    card = dict(old or {})
    if training is not None:
        card["training"] = training
    if metrics is not None:
        card["metrics"] = {**card.get("metrics", {}), **metrics}
    return card
