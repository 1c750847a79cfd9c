"""Typed YAML configuration: dataclass schemas + omegaconf, with errors that name the key, the file and the valid keys.

Every entry point takes ``--config FILE`` plus ``key=value`` overrides::

    cfg = load_config(TrainConfig, "configs/tokenizer/deco.yaml", ["optim.lr=1e-4", "data.root=/data/ucf101"])

The schema is a (possibly nested) dataclass; the YAML may set any subset of its fields. An unknown key or a value of
the wrong type raises :class:`ConfigError` with the dotted key, the file it came from and the keys that are valid
at that level.
"""
from __future__ import annotations

import dataclasses
from enum import Enum
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration problem a user can fix: wrong key, wrong type, missing file."""


def check_choices(*fields: tuple[str, Any, Sequence[Any]]) -> None:
    """Each ``(key, value, valid)``: ``value`` is one of ``valid``, or a ConfigError names the key and the choices."""
    for key, value, valid in fields:
        if value not in valid:
            raise ConfigError(f"invalid value '{key}={value}': valid values are {', '.join(map(str, valid))}")


def check_at_least(section: Any, keys: Sequence[str], low: int = 1, prefix: str = "", optional: bool = False) -> None:
    """Each ``section.<key>`` is >= ``low`` (``optional``: or None), or a ConfigError names ``<prefix><key>``."""
    for key in keys:
        value = getattr(section, key)
        if optional and value is None:
            continue
        if value < low:
            raise ConfigError(f"invalid value '{prefix}{key}={value}': must be >= {low}" + (" or null" if optional
                                                                                             else ""))


def _structured(schema: Any) -> DictConfig:
    """The schema's defaults in struct mode (an unknown key is an error), except free-form mappings -- fields typed
    ``dict[str, Any]`` such as ``model.config``, the preset overrides -- which take any key."""
    cfg = OmegaConf.structured(schema)
    OmegaConf.set_struct(cfg, True)

    def open_maps(node: DictConfig) -> None:
        for key in node:
            child = node._get_node(key)
            if isinstance(child, DictConfig) and not child._is_none() and not child._is_missing():
                if child._metadata.object_type in (None, dict):
                    OmegaConf.set_struct(child, False)
                else:
                    open_maps(child)

    open_maps(cfg)
    return cfg


def _valid_keys(schema: Any, dotted: str) -> list[str]:
    """Field names valid at the level of ``dotted`` (e.g. 'optim.lrr' -> fields of the optim schema)."""
    node = OmegaConf.structured(schema)
    for part in dotted.split(".")[:-1]:
        try:
            node = node[part]
        except Exception:
            break
    if isinstance(node, DictConfig):
        return sorted(str(k) for k in node.keys())
    return []


def _merge(base: DictConfig, other: Any, source: str, schema: Any) -> DictConfig:
    try:
        return OmegaConf.merge(base, other)
    except (ConfigKeyError, ValidationError, OmegaConfBaseException) as err:
        key = getattr(err, "full_key", None) or "?"
        valid = _valid_keys(schema, key)
        kind = "unknown key" if isinstance(err, ConfigKeyError) or "not in struct" in str(err) else "invalid value"
        msg = f"{kind} '{key}' in {source}"
        if kind == "invalid value":
            msg += ": " + str(getattr(err, "msg", err)).splitlines()[0]  # omegaconf's own key/type lines dropped
        if valid:
            msg += f"\n  valid keys here: {', '.join(valid)}"
        raise ConfigError(msg) from None


# Value checks (check_choices, check_at_least, __post_init__ and validate functions) word their errors
# "invalid value 'key=value': ..."; the key may be relative to a nested section.
_INVALID_VALUE = re.compile(r"invalid value '([^'=]+)=")


def _locate(message: str, cfg: DictConfig, sources: list[tuple[str, set[str]]]) -> str:
    """A value check's message made complete: the key dotted from the top, and where its value was set."""
    match = _INVALID_VALUE.search(message)
    if match is None:
        return f"{message} (config: {'; '.join(name for name, _ in sources) or 'the defaults'})"
    key = match.group(1)
    full = [k for k in flatten(OmegaConf.to_container(cfg)) if k == key or k.endswith("." + key)]
    if len(full) == 1:
        message = message.replace(f"'{key}=", f"'{full[0]}=", 1)
        key = full[0]
    origin = next((name for name, keys in reversed(sources)
                   if any(key == k or key.startswith(k + ".") for k in keys)), "the schema's defaults")
    return f"{message} (set in {origin})"


def _build(cfg: DictConfig, sources: list[tuple[str, set[str]]], validate: Callable[[Any], None] | None) -> Any:
    try:
        obj = OmegaConf.to_object(cfg)  # runs every section's __post_init__ checks
        if validate is not None:
            validate(obj)
    except ConfigError as err:
        raise ConfigError(_locate(str(err), cfg, sources)) from None
    return obj


# Where the bundled configs live: the checkout this code runs from (``configs/`` beside the packages; editable
# installs and PYTHONPATH runs), then a wheel's data files (``pyproject.toml``: [tool.setuptools.data-files]
# installs them under <prefix>/share/vidtok-lab/configs, prefix = the environment or the user base).
BUNDLED = Path("share") / "vidtok-lab"


def config_roots() -> list[str]:
    import sysconfig

    roots = [Path(__file__).resolve().parents[1]]
    for scheme in (None, f"{os.name}_user"):
        try:
            roots.append(Path(sysconfig.get_path("data", scheme) if scheme else sysconfig.get_path("data")) / BUNDLED)
        except KeyError:  # no user scheme on this platform
            continue
    return [str(r) for r in roots if (r / "configs").is_dir()]


def find_config(path: str | Path) -> Path:
    """A config path as given if it exists, else (relative paths such as ``configs/data/ucf101.yaml``) the bundled
    file of that name; unchanged when neither exists (the caller reports it)."""
    path = Path(path)
    if path.exists() or path.is_absolute():
        return path
    for root in config_roots():
        if (Path(root) / path).exists():
            return Path(root) / path
    return path


def load_config(schema: type[T], path: str | Path | None = None, overrides: Sequence[str] = (),
                validate: Callable[[T], None] | None = None) -> T:
    """Build ``schema`` from its defaults, then ``path`` (YAML), then ``key=value`` overrides; return a dataclass.

    ``validate(cfg)`` runs checks that need several fields. Every error is a :class:`ConfigError`; one about a
    value names its key from the top of the config and the file or override that set it.
    """
    cfg = _structured(schema)
    sources: list[tuple[str, set[str]]] = []
    if path is not None:
        path = find_config(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path} (nor among the bundled configs: {config_roots()})")
        try:
            loaded = OmegaConf.load(path)
        except Exception as err:  # YAML syntax errors
            raise ConfigError(f"cannot parse {path}: {err}") from None
        if not isinstance(loaded, DictConfig):
            raise ConfigError(f"{path} must hold a mapping of keys (key: value) at its top level, not a "
                              f"{type(OmegaConf.to_container(loaded)).__name__}")
        cfg = _merge(cfg, loaded, str(path), schema)
        sources.append((str(path), set(flatten(OmegaConf.to_container(loaded)))))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value")
        where = f"command-line override '{item}'" + (f" (config {path})" if path is not None else "")
        cfg = _merge(cfg, OmegaConf.from_dotlist([item]), where, schema)
        sources.append((where, {item.split("=", 1)[0].strip()}))
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"required keys not set ({path or 'no config file'}): {', '.join(missing)}")
    return _build(cfg, sources, validate)


def from_dict(schema: type[T], values: dict, source: str = "<dict>") -> T:
    """Validate a plain dict (e.g. a config stored beside a checkpoint) against ``schema``."""
    cfg = _structured(schema)
    cfg = _merge(cfg, OmegaConf.create(values), source, schema)
    return _build(cfg, [(source, set(flatten(values)))], None)


class Choice(str, Enum):
    """Base of a config field with a fixed set of string values: omegaconf refuses any other value by itself
    ("expected one of [...]"); a member equals, prints and serialises as its value (members are named as their
    values, which is what omegaconf matches a YAML string against)."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)


def to_dict(cfg: Any) -> dict:
    """A dataclass config as a plain, YAML/JSON-serialisable dict (:class:`Choice` fields as their values)."""
    if dataclasses.is_dataclass(cfg):
        return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True,  # type: ignore[return-value]
                                      enum_to_str=True)
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)  # type: ignore[return-value]
    return dict(cfg)


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """A nested mapping as flat ``{"a.b.c": leaf}`` (leaves, lists included, are kept as they are)."""
    if not isinstance(tree, Mapping):
        return {prefix[:-1]: tree}
    out: dict[str, Any] = {}
    for k, v in tree.items():
        out.update(flatten(v, f"{prefix}{k}."))
    return out


def to_yaml(cfg: Any) -> str:
    return OmegaConf.to_yaml(OmegaConf.create(to_dict(cfg)))


def print_config(cfg: Any, title: str = "resolved config", file=None) -> None:
    """Print the resolved config at the start of a job (rank 0 only is the caller's business)."""
    print(f"--- {title} ---\n{to_yaml(cfg)}---", file=file or sys.stdout, flush=True)
