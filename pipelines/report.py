"""The VAE-choice report: reconstruction beside downstream generation quality, one table per measurement protocol.

    python -m pipelines.report runs/eval-deco runs/eval-vcvae samples/latte-ucf-deco samples/latte-ucf-vcvae \
        bench_vae.json --out outputs/report

Each argument is a JSON file or a folder (searched for ``*.json``). Each JSON is recognised by its content:

- a reconstruction row (``pipelines/eval_recon.py``, or :meth:`pipelines.metrics.ReconMetrics.compute` plus a
  VAE name): ``psnr``, ``ssim``, ``lpips`` (with their bootstrap ``intervals`` when given), ``rfvd`` (a number or
  ``{"value", "label", "detector", ...}``), maybe ``parameters``, ``latent_shape``, ``compression``, timings;
- a generation result (``pipelines/sample.py --fvd`` writes ``fvd.json`` with ``"kind": "latte_fvd"``): the VAE, the
  Latte run's training steps, the FVD result of :func:`pipelines.fvd.compute_fvd` and, for ``--seeds``, the FVD of
  every sample seed;
- a VAE benchmark row (``benchmarks/bench_vae.py``) or a VAE description (:meth:`tokenizer.VideoVAE.describe`).

Numbers are only put in one column when they were measured under one protocol. A generation FVD's protocol is
(protocol name, frames, resolution, real and generated stride, real-clip seed, preprocessing, detector and its
weights' SHA-256, real set and its listing digest, numbers of real and generated clips): FVDs that differ in any of
these go to separate tables, each titled and its column named from its protocol, with the differences to the
first table listed; ``--single-table`` refuses such inputs instead, naming the differences. rFVDs measured under
different protocols (detector, weights, frames, resolution, clips) get separate, named columns likewise.

Each row shows the latent shape and the compression ratio; rows of one table that differ in latent size get a
visible note. Uncertainty: PSNR / SSIM / LPIPS show their bootstrap interval over clips when the input has one
(``ReconMetrics``), an FVD over several sample seeds shows mean ± standard deviation and the number of seeds.
Marks: † an FVD or rFVD from a detector whose numbers are not comparable to published FVD (random-init I3D,
``rgb_imagenet.pt``), ‡ fewer clips than the protocol asks, § LPIPS with a random backbone.
Outputs (atomically): ``vae_report.md``, ``vae_report.png`` (one panel per generation protocol: FVD against
rFVD) and ``vae_report.json`` (one object per VAE: its row and its generation results with their protocols).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

from tokenizer.io import atomic_path, write_json, write_text

MISSING = "—"
RANDOM_MARK = "†"  # not comparable to published FVD (random-init I3D, rgb_imagenet.pt)
INCOMPLETE_MARK = "‡"
LPIPS_RANDOM_MARK = "§"
LATENT_MARK = "◇"
RECON_COLUMNS = ("VAE", "params (M)", "latent shape", "compression", "encode (ms/clip)", "decode (ms/clip)",
                 "PSNR", "SSIM", "LPIPS")
GEN_COLUMNS = ("VAE", "latent shape", "compression", "{fvd}", "sample seeds", "Latte steps")


class ProtocolMismatch(ValueError):
    """Numbers measured under different protocols were asked to share one table."""


@dataclass
class VAERow:
    """Everything the report knows about one VAE's tokenizer; ``None`` = not measured (shown as "—")."""

    vae: str
    parameters: Optional[int] = None
    latent_shape: Optional[list[int]] = None  # (c, t, h, w) of one clip
    clip_shape: Optional[list[int]] = None  # (3, T, H, W) the latent shape belongs to
    compression: Optional[list[int]] = None  # (t, h, w)
    latent_channels: Optional[int] = None
    encode_ms: Optional[float] = None
    decode_ms: Optional[float] = None
    psnr: Optional[float] = None
    ssim: Optional[float] = None
    lpips: Optional[float] = None
    intervals: dict = field(default_factory=dict)  # metric -> [low, high] (bootstrap over clips)
    lpips_random: bool = False
    rfvd: Optional[float] = None
    rfvd_random: bool = False
    rfvd_protocol: Optional[dict] = None
    sources: list[str] = field(default_factory=list)

    def update(self, values: dict, source: str) -> None:
        """Take every known, non-None value (a later file overrides an earlier one for the same field)."""
        for key, value in values.items():
            if value is not None and key in self.__dataclass_fields__ and key not in ("vae", "sources"):
                setattr(self, key, value)
        self.sources.append(source)

    def compression_ratio(self) -> Optional[float]:
        return compression_ratio(self.compression, self.latent_channels)


@dataclass
class GenerationResult:
    """One generated set's FVD (a Latte run sampled and scored), with the protocol it was measured under."""

    vae: str
    fvd: float  # the mean over sample seeds
    protocol: dict  # the comparison key (see protocol_key)
    fvd_std: Optional[float] = None
    seeds: list = field(default_factory=list)  # sample seeds, when several
    values: list = field(default_factory=list)  # FVD of each seed
    not_comparable: bool = False
    incomplete: bool = False
    line: Optional[str] = None
    train_steps: Optional[int] = None
    latent_shape: Optional[list[int]] = None
    compression: Optional[list[int]] = None
    latent_channels: Optional[int] = None
    source: str = ""


def compression_ratio(compression: Optional[Sequence[int]], channels: Optional[int]) -> Optional[float]:
    """Pixel values per latent value of the architecture, 3 t h w / c (a causal VAE's lone first frame aside)."""
    if compression and channels:
        return 3 * math.prod(compression) / channels
    return None


# ------------------------------------------------------------------------------------------ reading the inputs

def _vae_name(d: dict) -> Optional[str]:
    for key in ("vae", "vae_name", "name", "model"):
        value = d.get(key)
        if isinstance(value, dict):
            value = value.get("name")
        if isinstance(value, str) and value:
            return value
    return None


def _number(x: Any) -> Optional[float]:
    if isinstance(x, dict):
        x = x.get("value", x.get("fvd", x.get("mean")))
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def _not_comparable(d: Any) -> bool:
    """Whether an FVD / rFVD result (dict) came from a detector whose numbers are not comparable to published FVD
    (it carries a label: random-init I3D, rgb_imagenet.pt)."""
    if not isinstance(d, dict):
        return False
    det = d.get("detector")
    return bool(d.get("label")) or bool(isinstance(det, dict) and (det.get("random_init") or det.get("label")))


def _shape(x: Any) -> Optional[list[int]]:
    if isinstance(x, str):
        x = [p for p in x.replace("×", "x").split("x")]
    try:
        return [int(v) for v in x] if x else None
    except (TypeError, ValueError):
        return None


def protocol_key(result: dict) -> dict:
    """What must be equal for two FVDs to be compared: from a :meth:`pipelines.fvd.FVDResult.to_dict`."""
    p = result.get("protocol") if isinstance(result.get("protocol"), dict) else {}
    det = result.get("detector") if isinstance(result.get("detector"), dict) else {}
    real = result.get("real") if isinstance(result.get("real"), dict) else {}
    src = real.get("source")
    clips = result.get("clips") if isinstance(result.get("clips"), dict) else {}
    return dict(protocol=p.get("name"), frames=p.get("num_frames"), resolution=p.get("resolution"),
                real_stride=p.get("real_stride"), fake_stride=p.get("fake_stride"), seed=p.get("seed"),
                preprocessing=p.get("preprocessing"), detector=det.get("name"), detector_sha256=det.get("sha256"),
                real_set=(src.get("root") or src.get("kind")) if isinstance(src, dict) else src,
                real_split=src.get("split") if isinstance(src, dict) else None,
                real_listing_sha256=src.get("listing_sha256") if isinstance(src, dict) else None,
                real_clips=clips.get("real"), generated_clips=clips.get("fake"))


def rfvd_key(rfvd: dict) -> dict:
    """The protocol of an rFVD (``ReconMetrics``): detector and weights, clip frames, resolution, clips."""
    det = rfvd.get("detector") if isinstance(rfvd.get("detector"), dict) else {}
    return dict(detector=det.get("name"), detector_sha256=det.get("sha256"), frames=rfvd.get("clip_frames"),
                resolution=rfvd.get("resolution"), clips=rfvd.get("num_clips"))


def differences(a: dict, b: dict) -> list[str]:
    """'key: a vs b' for every field two protocol keys disagree on."""
    def short(key: str, v: Any) -> Any:  # digests by their first 12 hex digits
        return v[:12] + "…" if "sha256" in key and isinstance(v, str) else v

    return [f"{k}: {short(k, a.get(k))} vs {short(k, b.get(k))}" for k in a if a.get(k) != b.get(k)]


def _recon_values(d: dict) -> dict:
    metrics = d.get("metrics") if isinstance(d.get("metrics"), dict) else d
    rfvd = metrics.get("rfvd")
    has_rfvd = _number(rfvd) is not None  # the flags travel with the number they describe
    lpips = _number(metrics.get("lpips"))
    intervals = dict(metrics["intervals"]) if isinstance(metrics.get("intervals"), dict) else None
    if has_rfvd and isinstance(rfvd, dict) and rfvd.get("interval"):
        intervals = dict(intervals or {}, rfvd=rfvd["interval"])  # ReconMetrics(rfvd_bootstrap=...)
    return dict(psnr=_number(metrics.get("psnr")), ssim=_number(metrics.get("ssim")), lpips=lpips,
                intervals=intervals, lpips_random=bool(d.get("lpips_random_backbone")) if lpips is not None else None,
                rfvd=_number(rfvd), rfvd_random=_not_comparable(rfvd) if has_rfvd else None,
                rfvd_protocol=(rfvd_key(rfvd) if isinstance(rfvd, dict) else {}) if has_rfvd else None,
                **_vae_facts(d))


def _vae_facts(d: dict) -> dict:
    """Parameters, shapes and timings wherever a file states them."""
    vae = d.get("vae") if isinstance(d.get("vae"), dict) else d
    params = vae.get("parameters", d.get("parameters"))
    if params is None and d.get("params_M") is not None:
        params = round(float(d["params_M"]) * 1e6)
    enc = d.get("encode_ms", None if d.get("encode_s") is None else float(d["encode_s"]) * 1000)
    dec = d.get("decode_ms", None if d.get("decode_s") is None else float(d["decode_s"]) * 1000)
    clip = _shape(d.get("clip_shape"))
    side = d.get("size", d.get("resolution"))  # bench_vae rows: size; eval_recon rows: resolution (square clips)
    if clip is None and isinstance(d.get("frames"), int) and isinstance(side, int):
        clip = [3, int(d["frames"]), int(side), int(side)]
    return dict(parameters=int(params) if isinstance(params, (int, float)) else None,
                latent_shape=_shape(d.get("latent_shape")), clip_shape=clip,
                compression=_shape(vae.get("compression", d.get("compression"))),
                latent_channels=vae.get("latent_channels", d.get("latent_channels")),
                encode_ms=_number(enc), decode_ms=_number(dec))


def _generation(name: str, d: dict, source: str) -> Optional[GenerationResult]:
    result = d.get("fvd") if isinstance(d.get("fvd"), dict) else d
    value = _number(result.get("fvd", result.get("value")))
    if value is None:
        return None
    seeds = d.get("seeds") if isinstance(d.get("seeds"), dict) else {}
    values = [float(v) for v in seeds.get("values", [])]
    facts = _vae_facts(d)
    return GenerationResult(
        vae=name, fvd=float(seeds.get("mean", value)) if values else value, protocol=protocol_key(result),
        fvd_std=float(seeds["std"]) if values and seeds.get("std") is not None else None,
        seeds=list(seeds.get("seeds", [])), values=values, not_comparable=_not_comparable(result),
        incomplete=not bool(result.get("complete", True)), line=result.get("line"), train_steps=d.get("train_steps"),
        latent_shape=facts["latent_shape"], compression=facts["compression"],
        latent_channels=facts["latent_channels"], source=source)


def classify(d: Any, source: str = "") -> list[tuple[str, dict | GenerationResult]]:
    """(vae, values) pairs a JSON document contributes (a :class:`GenerationResult` for a generation FVD)."""
    if isinstance(d, list):
        return [pair for item in d for pair in classify(item, source)]
    if not isinstance(d, dict) or d.get("kind") == "sample_video":
        return []
    name = _vae_name(d)
    if name is None:
        return []
    if d.get("kind") == "latte_fvd":
        gen = _generation(name, d, source)
        facts = {k: v for k, v in _vae_facts(d).items() if k in ("latent_channels", "compression", "parameters")}
        return [(name, facts)] + ([(name, gen)] if gen is not None else [])
    metrics = d.get("metrics") if isinstance(d.get("metrics"), dict) else d
    if any(k in metrics for k in ("psnr", "ssim", "lpips", "rfvd")):
        return [(name, _recon_values(d))]
    if d.get("peer"):
        return []  # diffusers peers in a benchmark are not toolkit VAEs
    if any(k in d for k in ("params_M", "encode_s", "parameters", "latent_channels")):
        return [(name, _vae_facts(d))]
    return []


def _json_files(path: Path) -> Iterable[Path]:
    if path.is_file():
        yield path
    elif path.is_dir():
        yield from sorted(p for p in path.rglob("*.json") if not any(part.startswith(".") for part in p.parts))
    else:
        raise FileNotFoundError(f"report input not found: {path}")


def collect(inputs: Sequence[str | Path]) -> tuple[list[VAERow], list[GenerationResult]]:
    """One :class:`VAERow` per VAE named in the inputs (order of first appearance) and every generation result."""
    rows: dict[str, VAERow] = {}
    gens: list[GenerationResult] = []
    for item in inputs:
        for path in _json_files(Path(item)):
            try:
                doc = json.loads(path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue  # not one of ours
            for name, values in classify(doc, str(path)):
                row = rows.setdefault(name, VAERow(name))
                if isinstance(values, GenerationResult):
                    gens.append(values)
                    row.sources.append(str(path))
                else:
                    row.update(values, str(path))
    for row in rows.values():
        fill_from_registry(row)
    for gen in gens:
        row = rows[gen.vae]
        gen.compression = gen.compression or row.compression
        gen.latent_channels = gen.latent_channels or row.latent_channels
    return list(rows.values()), gens


def collect_rows(inputs: Sequence[str | Path]) -> list[VAERow]:
    return collect(inputs)[0]


def fill_from_registry(row: VAERow) -> None:
    """Architecture facts no file stated, from the registry preset built on the meta device (no memory, no
    weights): parameter count, compression, channels, and the latent shape of the clip the metrics used."""
    import torch

    from tokenizer import FrameCountError, build_vae, vae_names

    if row.vae not in vae_names():
        return  # not a toolkit preset (e.g. 'sd'): only what the files say
    with torch.device("meta"):
        vae = build_vae(row.vae)
    if row.parameters is None:
        row.parameters = sum(p.numel() for p in vae.parameters())
    row.compression = row.compression or list(vae.compression)
    row.latent_channels = row.latent_channels or vae.latent_channels
    if row.latent_shape is None and row.clip_shape:
        try:
            row.latent_shape = list(vae.latent_shape(*row.clip_shape[1:]))
        except (FrameCountError, ValueError):
            pass  # a clip the VAE does not take: leave it "—"


# ------------------------------------------------------------------------------------------------ grouping

def group(items: Sequence[Any], key: Any) -> list[tuple[dict, list]]:
    """Items grouped by an equal protocol key, groups in order of first appearance."""
    groups: dict[str, tuple[dict, list]] = {}
    for item in items:
        k = key(item)
        groups.setdefault(json.dumps(k, sort_keys=True, default=str), (k, []))[1].append(item)
    return list(groups.values())


def fvd_column(key: dict) -> str:
    """A generation table's FVD column, named from its protocol (never "FVD16" for 8 frames)."""
    return f"FVD{key.get('frames')} ({key.get('protocol')})"


def rfvd_column(key: dict, several: bool) -> str:
    name = f"rFVD{'/'.join(map(str, key.get('frames') or []))}" if key.get("frames") else "rFVD"
    if not several:
        return name
    sha = (key.get("detector_sha256") or "")[:8]
    return f"{name} ({key.get('detector')} {sha}, {key.get('resolution')} px, {key.get('clips')} clips)"


def check_single_table(rows: Sequence[VAERow], gens: Sequence[GenerationResult]) -> None:
    """Refuse (ProtocolMismatch, naming every difference) numbers of one kind measured under several protocols."""
    problems = []
    for what, groups in (("generation FVD", group(gens, lambda g: g.protocol)),
                         ("rFVD", group([r for r in rows if r.rfvd is not None], lambda r: r.rfvd_protocol))):
        for key, members in groups[1:]:
            first, first_members = groups[0]
            names = ", ".join(m.vae for m in members)
            problems.append(f"{what} of {names} vs {', '.join(m.vae for m in first_members)}: "
                            f"{'; '.join(differences(first, key))}")
    if problems:
        raise ProtocolMismatch("these numbers were measured under different protocols and cannot share a column "
                               "(drop --single-table to get one table per protocol): " + " | ".join(problems))


# ------------------------------------------------------------------------------------------------- rendering

def _fmt(x: Optional[float], digits: int) -> str:
    return MISSING if x is None else f"{x:.{digits}f}"


def _with_interval(x: Optional[float], interval: Any, digits: int) -> str:
    text = _fmt(x, digits)
    if x is not None and isinstance(interval, (list, tuple)) and len(interval) == 2:
        text += f" [{interval[0]:.{digits}f}, {interval[1]:.{digits}f}]"
    return text


def _compression_cell(compression: Optional[Sequence[int]], channels: Optional[int]) -> str:
    if not compression:
        return MISSING
    ratio = compression_ratio(compression, channels)
    return "×".join(map(str, compression)) + (f" ({ratio:.0f}:1)" if ratio else "")


def _latent_cell(shape: Optional[Sequence[int]], mark: bool) -> str:
    return MISSING if not shape else "×".join(map(str, shape)) + (LATENT_MARK if mark else "")


def _differs_in_latent(shapes: Sequence[Optional[Sequence[int]]]) -> bool:
    known = {tuple(s) for s in shapes if s}
    return len(known) > 1


def recon_table(rows: Sequence[VAERow]) -> tuple[list[str], list[list[str]], list[dict]]:
    """Header, cells and the rFVD protocols (one column each) of the reconstruction table."""
    rkeys = [k for k, _ in group([r for r in rows if r.rfvd is not None], lambda r: r.rfvd_protocol)]
    header = list(RECON_COLUMNS) + [rfvd_column(k, len(rkeys) > 1) for k in rkeys]
    mark = _differs_in_latent([r.latent_shape for r in rows])
    cells = []
    for r in rows:
        lpips = _with_interval(r.lpips, r.intervals.get("lpips"), 4)
        lpips += LPIPS_RANDOM_MARK if r.lpips is not None and r.lpips_random else ""
        line = [f"`{r.vae}`", _fmt(None if r.parameters is None else r.parameters / 1e6, 2),
                _latent_cell(r.latent_shape, mark), _compression_cell(r.compression, r.latent_channels),
                _fmt(r.encode_ms, 1), _fmt(r.decode_ms, 1), _with_interval(r.psnr, r.intervals.get("psnr"), 2),
                _with_interval(r.ssim, r.intervals.get("ssim"), 4), lpips]
        for k in rkeys:
            here = r.rfvd is not None and r.rfvd_protocol == k
            cell = _with_interval(r.rfvd, r.intervals.get("rfvd"), 1) + (RANDOM_MARK if r.rfvd_random else "")
            line.append(cell if here else MISSING)
        cells.append(line)
    return header, cells, rkeys


def generation_table(key: dict, gens: Sequence[GenerationResult]) -> tuple[list[str], list[list[str]]]:
    header = [c.format(fvd=fvd_column(key)) for c in GEN_COLUMNS]
    mark = _differs_in_latent([g.latent_shape for g in gens])
    cells = []
    for g in gens:
        fvd = _fmt(g.fvd, 1) + (f" ± {g.fvd_std:.1f}" if g.fvd_std is not None else "")
        fvd += (RANDOM_MARK if g.not_comparable else "") + (INCOMPLETE_MARK if g.incomplete else "")
        cells.append([f"`{g.vae}`", _latent_cell(g.latent_shape, mark),
                      _compression_cell(g.compression, g.latent_channels), fvd,
                      str(len(g.values)) if g.values else "1",
                      MISSING if g.train_steps is None else str(g.train_steps)])
    return header, cells


def describe_protocol(key: dict) -> str:
    sha = (key.get("detector_sha256") or "?")[:12]
    real = f"real set {key.get('real_set') or '?'}"
    if key.get("real_listing_sha256"):
        real += f" (split {key.get('real_split')}, listing sha256 {key['real_listing_sha256'][:12]}…)"
    return (f"protocol `{key.get('protocol')}`: {key.get('frames')} frames, {key.get('resolution')} px, real stride "
            f"{key.get('real_stride')}, generated stride {key.get('fake_stride')}, {key.get('real_clips')} real vs "
            f"{key.get('generated_clips')} generated clips, real-clip seed {key.get('seed')}; detector "
            f"`{key.get('detector')}` (sha256 {sha}…); {real}; {key.get('preprocessing')}")


def _md_table(header: Sequence[str], cells: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(c) + " |" for c in cells)]


def markdown(rows: Sequence[VAERow], gens: Sequence[GenerationResult] = (),
             title: str = "VAE choice: reconstruction vs. Latte generation") -> str:
    lines = [f"# {title}", "", "## Reconstruction", ""]
    header, cells, rkeys = recon_table(rows)
    lines += _md_table(header, cells)
    notes = []
    if len(rkeys) > 1:
        notes.append("rFVD columns: measured under different protocols (detector, weights, frames, resolution or "
                     "clips), so they are separate columns, not one.")
    if _differs_in_latent([r.latent_shape for r in rows]):
        notes.append(f"{LATENT_MARK}: the rows differ in latent size: compare compression ratios, not only scores.")
    if any(r.intervals for r in rows):
        notes.append("[low, high]: 95% bootstrap interval over clips.")
    lines += ["", *notes] if notes else []
    groups = group(gens, lambda g: g.protocol)
    for n, (key, members) in enumerate(groups, 1):
        lines += ["", f"## Generation {n}: {fvd_column(key)}", "", describe_protocol(key), ""]
        lines += _md_table(*generation_table(key, members))
        gnotes = []
        if n > 1:
            diff = "; ".join(differences(groups[0][0], key))
            gnotes.append(f"Not comparable with generation table 1; differs in: {diff}.")
        if _differs_in_latent([g.latent_shape for g in members]):
            shapes = ", ".join(f"`{g.vae}` {'×'.join(map(str, g.latent_shape or []))}" for g in members)
            gnotes.append(f"{LATENT_MARK}: the Latte models of this table saw latents of different sizes ({shapes}): "
                          "an FVD difference mixes the tokenizer with the diffusion model's input size.")
        if any(g.values for g in members):
            gnotes.append("± : standard deviation of the FVD over the sample seeds (column 'sample seeds').")
        lines += ["", *gnotes] if gnotes else []
    marks = [f"{MISSING}: not measured."]
    if any(r.rfvd_random and r.rfvd is not None for r in rows) or any(g.not_comparable for g in gens):
        marks.append(f"{RANDOM_MARK}: detector not comparable to published FVD (RANDOM-INIT I3D or rgb_imagenet.pt).")
    if any(r.lpips_random and r.lpips is not None for r in rows):
        marks.append(f"{LPIPS_RANDOM_MARK}: random-init LPIPS backbone: not comparable to published LPIPS.")
    if any(g.incomplete for g in gens):
        marks.append(f"{INCOMPLETE_MARK}: fewer clips than the FVD protocol asks: not comparable to the published "
                     "protocol.")
    marks.append("Compression: t×h×w (pixel values per latent value, 3·t·h·w / c). Latent shape: c×t×h×w of "
                 "one clip, as stated by the inputs (sample.py: the clip Latte trained on) or, for a registered "
                 "preset, computed for the last clip an input names.")
    lines += ["", *marks, ""]
    fvd_lines = [f"- `{g.vae}`: {g.line}" for g in gens if g.line]
    if fvd_lines:
        lines += ["FVD results:", "", *fvd_lines, ""]
    return "\n".join(lines)


def plot(rows: Sequence[VAERow], gens: Sequence[GenerationResult], path: str | Path) -> list[str]:
    """One panel per generation protocol: FVD (y) against rFVD (x), one labelled point per VAE that has both (its
    rFVD from the report's first rFVD protocol); returns the VAEs left out."""
    import matplotlib

    matplotlib.use("Agg")  # no display; writing files only
    import matplotlib.pyplot as plt

    rkeys = [k for k, _ in group([r for r in rows if r.rfvd is not None], lambda r: r.rfvd_protocol)]
    by_vae = {r.vae: r for r in rows if r.rfvd is not None and rkeys and r.rfvd_protocol == rkeys[0]}
    groups = group(gens, lambda g: g.protocol) or [({}, [])]
    fig, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 4.2), dpi=120, squeeze=False)
    left_out = [r.vae for r in rows if r.vae not in {g.vae for g in gens if g.vae in by_vae}]
    for ax, (key, members) in zip(axes[0], groups):
        for g in members:
            r = by_vae.get(g.vae)
            if r is None:
                continue
            hollow = r.rfvd_random or g.not_comparable
            ax.scatter([r.rfvd], [g.fvd], s=40, facecolors="none" if hollow else "C0", edgecolors="C0")
            if g.fvd_std is not None:
                ax.errorbar([r.rfvd], [g.fvd], yerr=[g.fvd_std], fmt="none", ecolor="C0", alpha=0.5)
            ax.annotate(g.vae + (f" {RANDOM_MARK}" if hollow else ""), (r.rfvd, g.fvd), textcoords="offset points",
                        xytext=(5, 4), fontsize=8)
        ax.set_xlabel(rfvd_column(rkeys[0], False) + " (reconstruction)" if rkeys else "rFVD (reconstruction)")
        ax.set_ylabel(f"Latte {fvd_column(key)}" if key else "Latte FVD (generation)")
        ax.set_title("Does a better VAE reconstruction give better generation?", fontsize=9)
        ax.grid(alpha=0.3)
    caption = []
    if any(r.rfvd_random for r in by_vae.values()) or any(g.not_comparable for g in gens):
        caption.append(f"hollow {RANDOM_MARK}: detector not comparable to published FVD")
    if left_out:
        caption.append("no rFVD or FVD: " + ", ".join(left_out))
    if caption:
        fig.text(0.01, 0.01, "\n".join(caption), fontsize=7, va="bottom")
        fig.subplots_adjust(bottom=0.14 + 0.03 * len(caption))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return left_out


def json_row(row: VAERow, gens: Sequence[GenerationResult]) -> dict:
    """One object per VAE: its row, every generation result with its protocol, and (first result) ``fvd``,
    ``fvd_column`` (the name its table gives it), ``fvd_random`` for quick reading."""
    mine = [g for g in gens if g.vae == row.vae]
    first = mine[0] if mine else None
    return dict(asdict(row), generation=[asdict(g) for g in mine], fvd=first.fvd if first else None,
                fvd_column=fvd_column(first.protocol) if first else None,
                fvd_random=first.not_comparable if first else None)


def write_report(inputs: Sequence[str | Path], out_dir: str | Path, title: Optional[str] = None,
                 single_table: bool = False) -> dict:
    """Collect the rows, write ``vae_report.{md,png,json}`` into ``out_dir``; return the paths, rows and results.
    ``single_table``: refuse (:class:`ProtocolMismatch`) inputs measured under several protocols."""
    rows, gens = collect(inputs)
    if not rows:
        raise ValueError("no report inputs found: expected eval_recon rows, sample.py fvd.json files, VAE "
                         f"benchmark rows or VAE descriptions under {', '.join(map(str, inputs))}")
    if single_table:
        check_single_table(rows, gens)
    out = Path(out_dir)
    text = markdown(rows, gens, title) if title else markdown(rows, gens)
    write_text(out / "vae_report.md", text)
    left_out = plot(rows, gens, out / "vae_report.png")
    write_json(out / "vae_report.json", [json_row(r, gens) for r in rows])
    return dict(markdown=out / "vae_report.md", png=out / "vae_report.png", json=out / "vae_report.json",
                rows=rows, generation=gens, text=text, not_plotted=left_out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="+", metavar="RUN",
                        help="JSON files or folders: eval_recon rows, sample.py fvd.json, bench_vae rows")
    parser.add_argument("--out", default="outputs/report", help="folder for vae_report.{md,png,json}")
    parser.add_argument("--title", default=None)
    parser.add_argument("--single-table", action="store_true",
                        help="refuse inputs measured under different protocols (default: one table per protocol)")
    args = parser.parse_args(argv)
    missing = [p for p in args.inputs if not Path(p).exists()]
    if missing:
        print(f"error: report input(s) not found: {', '.join(missing)}", file=sys.stderr)
        return 2
    try:
        result = write_report(args.inputs, args.out, args.title, args.single_table)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(result["text"])
    print(f"wrote {result['markdown']}, {result['png']}, {result['json']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
