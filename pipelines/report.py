"""The VAE-choice report: one row per video VAE, reconstruction beside downstream generation quality.

    python -m pipelines.report runs/eval-deco runs/eval-vcvae samples/latte-ucf-deco samples/latte-ucf-vcvae \
        bench_vae.json --out outputs/report

Each argument is a JSON file or a folder (searched for ``*.json``). Each JSON is recognised by its content:

- a reconstruction row (``pipelines/eval_recon.py``, or :meth:`pipelines.metrics.ReconMetrics.compute` plus a
  VAE name): ``psnr``, ``ssim``, ``lpips``, ``rfvd`` (a number or ``{"value", "label", "detector"}``), maybe
  ``parameters``, ``latent_shape``, ``compression``, ``encode_ms`` / ``decode_ms``;
- a generation result (``pipelines/sample.py --fvd`` writes ``fvd.json`` with ``"kind": "latte_fvd"``): the VAE, the
  Latte run's training steps and the FVD16 result of :func:`pipelines.fvd.compute_fvd`;
- a VAE benchmark row (``benchmarks/bench_vae.py``; a list of rows or one row): ``model``, ``params_M``,
  ``encode_s`` / ``decode_s`` per clip, ``compression``, ``latent_channels``;
- a VAE description (:meth:`tokenizer.VideoVAE.describe`): ``name``, ``parameters``, ``compression``,
  ``latent_channels``.

Rows are keyed by the VAE's registry name; for a registered preset, facts no file states (parameters, compression,
latent shape of the clip an input names) come from the preset built on the meta device. A file that names no VAE,
or is none of the above (per-video sidecars, training configs), is ignored. A missing number shows as "—". An FVD
or rFVD computed with a randomly initialised I3D is marked "†" (not comparable to published numbers), an FVD with
fewer clips than its protocol asks "‡", an LPIPS with a random backbone "§".
Outputs (atomically): ``vae_report.md`` (the table), ``vae_report.png`` (FVD16 against rFVD) and
``vae_report.json`` (the merged rows).
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
RANDOM_MARK = "†"
INCOMPLETE_MARK = "‡"
LPIPS_RANDOM_MARK = "§"
COLUMNS = ("VAE", "params (M)", "latent shape", "compression", "encode (ms/clip)", "decode (ms/clip)", "PSNR",
           "SSIM", "LPIPS", "rFVD", "Latte FVD16", "Latte steps")


@dataclass
class VAERow:
    """Everything the report knows about one VAE; ``None`` = not measured (shown as "—")."""

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
    lpips_random: bool = False
    rfvd: Optional[float] = None
    rfvd_random: bool = False
    fvd16: Optional[float] = None
    fvd_random: bool = False
    fvd_incomplete: bool = False
    fvd_line: Optional[str] = None
    train_steps: Optional[int] = None
    sources: list[str] = field(default_factory=list)

    def update(self, values: dict, source: str) -> None:
        """Take every known, non-None value (a later file overrides an earlier one for the same field)."""
        for key, value in values.items():
            if value is not None and key in self.__dataclass_fields__ and key not in ("vae", "sources"):
                setattr(self, key, value)
        self.sources.append(source)

    def compression_ratio(self) -> Optional[float]:
        """Pixel values per latent value of the architecture, 3 t h w / c (a causal VAE's lone first frame aside)."""
        if self.compression and self.latent_channels:
            return 3 * math.prod(self.compression) / self.latent_channels
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


def _is_random(d: Any) -> bool:
    """Whether an FVD / rFVD result (dict) came from a randomly initialised I3D."""
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


def _recon_values(d: dict) -> dict:
    metrics = d.get("metrics") if isinstance(d.get("metrics"), dict) else d
    rfvd = metrics.get("rfvd")
    has_rfvd = _number(rfvd) is not None  # the flag travels with the number it describes
    lpips = _number(metrics.get("lpips"))
    return dict(psnr=_number(metrics.get("psnr")), ssim=_number(metrics.get("ssim")), lpips=lpips,
                lpips_random=bool(d.get("lpips_random_backbone")) if lpips is not None else None,
                rfvd=_number(rfvd), rfvd_random=_is_random(rfvd) if has_rfvd else None, **_vae_facts(d))


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


def _generation_values(d: dict) -> dict:
    result = d.get("fvd") if isinstance(d.get("fvd"), dict) else d
    value = _number(result.get("fvd", result.get("value")))
    complete = bool(result.get("complete", True))
    has = value is not None  # the flags travel with the number they describe
    return dict(fvd16=value, fvd_random=_is_random(result) if has else None,
                fvd_incomplete=(not complete) if has else None,
                fvd_line=result.get("line"), train_steps=d.get("train_steps"))


def classify(d: Any) -> list[tuple[str, dict]]:
    """(vae, values) pairs a JSON document contributes; empty when it is not a report input."""
    if isinstance(d, list):
        return [pair for item in d for pair in classify(item)]
    if not isinstance(d, dict) or d.get("kind") == "sample_video":
        return []
    name = _vae_name(d)
    if name is None:
        return []
    if d.get("kind") == "latte_fvd":
        return [(name, dict(_generation_values(d), **_vae_facts(d)))]
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


def collect_rows(inputs: Sequence[str | Path]) -> list[VAERow]:
    """One :class:`VAERow` per VAE named in the inputs, in order of first appearance."""
    rows: dict[str, VAERow] = {}
    for item in inputs:
        for path in _json_files(Path(item)):
            try:
                doc = json.loads(path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue  # not one of ours
            for name, values in classify(doc):
                rows.setdefault(name, VAERow(name)).update(values, str(path))
    for row in rows.values():
        fill_from_registry(row)
    return list(rows.values())


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


# ------------------------------------------------------------------------------------------------- rendering

def _fmt(x: Optional[float], digits: int) -> str:
    return MISSING if x is None else f"{x:.{digits}f}"


def table_row(r: VAERow) -> list[str]:
    ratio = r.compression_ratio()
    comp = MISSING
    if r.compression:
        comp = "×".join(map(str, r.compression)) + (f" ({ratio:.0f}:1)" if ratio else "")
    rfvd = _fmt(r.rfvd, 1) + (RANDOM_MARK if r.rfvd is not None and r.rfvd_random else "")
    fvd = _fmt(r.fvd16, 1)
    if r.fvd16 is not None:
        fvd += (RANDOM_MARK if r.fvd_random else "") + (INCOMPLETE_MARK if r.fvd_incomplete else "")
    return [f"`{r.vae}`", _fmt(None if r.parameters is None else r.parameters / 1e6, 2),
            MISSING if not r.latent_shape else "×".join(map(str, r.latent_shape)), comp,
            _fmt(r.encode_ms, 1), _fmt(r.decode_ms, 1), _fmt(r.psnr, 2), _fmt(r.ssim, 4),
            _fmt(r.lpips, 4) + (LPIPS_RANDOM_MARK if r.lpips is not None and r.lpips_random else ""), rfvd,
            fvd, MISSING if r.train_steps is None else str(r.train_steps)]


def markdown(rows: Sequence[VAERow], title: str = "VAE choice: reconstruction vs. Latte generation") -> str:
    lines = [f"# {title}", "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(table_row(r)) + " |" for r in rows]
    notes = [f"{MISSING}: not measured."]
    if any(r.rfvd_random and r.rfvd is not None or r.fvd_random and r.fvd16 is not None for r in rows):
        notes.append(f"{RANDOM_MARK}: computed with a RANDOM-INIT I3D: not comparable to published FVD.")
    if any(r.lpips_random and r.lpips is not None for r in rows):
        notes.append(f"{LPIPS_RANDOM_MARK}: random-init LPIPS backbone: not comparable to published LPIPS.")
    if any(r.fvd_incomplete and r.fvd16 is not None for r in rows):
        notes.append(f"{INCOMPLETE_MARK}: fewer clips than the FVD protocol asks: not comparable to published FVD16.")
    notes.append("Compression: t×h×w (pixel values per latent value, 3·t·h·w / c). Latent shape: c×t×h×w of "
                 "one clip, as stated by the inputs (sample.py: the clip Latte trained on) or, for a registered "
                 "preset, computed for the last clip an input names.")
    lines += ["", *notes, ""]
    fvd_lines = [f"- `{r.vae}`: {r.fvd_line}" for r in rows if r.fvd_line]
    if fvd_lines:
        lines += ["FVD protocols:", "", *fvd_lines, ""]
    return "\n".join(lines)


def plot(rows: Sequence[VAERow], path: str | Path) -> list[str]:
    """FVD16 (y) against rFVD (x), one labelled point per VAE that has both; returns the VAEs left out."""
    import matplotlib

    matplotlib.use("Agg")  # no display; writing files only
    import matplotlib.pyplot as plt

    shown = [r for r in rows if r.rfvd is not None and r.fvd16 is not None]
    left_out = [r.vae for r in rows if r not in shown]
    fig, ax = plt.subplots(figsize=(5.5, 4.2), dpi=120)
    for r in shown:
        random = r.rfvd_random or r.fvd_random
        ax.scatter([r.rfvd], [r.fvd16], s=40, facecolors="none" if random else "C0", edgecolors="C0")
        ax.annotate(r.vae + (f" {RANDOM_MARK}" if random else ""), (r.rfvd, r.fvd16), textcoords="offset points",
                    xytext=(5, 4), fontsize=8)
    ax.set_xlabel("rFVD (reconstruction)")
    ax.set_ylabel("Latte FVD16 (generation)")
    ax.set_title("Does a better VAE reconstruction give better generation?", fontsize=9)
    caption = []
    if any(r.rfvd_random or r.fvd_random for r in shown):
        caption.append(f"hollow {RANDOM_MARK}: random-init I3D, not comparable to published FVD")
    if left_out:
        caption.append("no rFVD or FVD16: " + ", ".join(left_out))
    if caption:
        fig.text(0.01, 0.01, "\n".join(caption), fontsize=7, va="bottom")
        fig.subplots_adjust(bottom=0.14 + 0.03 * len(caption))
    ax.grid(alpha=0.3)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return left_out


def write_report(inputs: Sequence[str | Path], out_dir: str | Path, title: Optional[str] = None) -> dict:
    """Collect the rows, write ``vae_report.{md,png,json}`` into ``out_dir``; return the paths and the rows."""
    rows = collect_rows(inputs)
    if not rows:
        raise ValueError("no report inputs found: expected eval_recon rows, sample.py fvd.json files, VAE "
                         f"benchmark rows or VAE descriptions under {', '.join(map(str, inputs))}")
    out = Path(out_dir)
    text = markdown(rows, title) if title else markdown(rows)
    write_text(out / "vae_report.md", text)
    left_out = plot(rows, out / "vae_report.png")
    write_json(out / "vae_report.json", [asdict(r) for r in rows])
    return dict(markdown=out / "vae_report.md", png=out / "vae_report.png", json=out / "vae_report.json",
                rows=rows, text=text, not_plotted=left_out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="+", metavar="RUN",
                        help="JSON files or folders: eval_recon rows, sample.py fvd.json, bench_vae rows")
    parser.add_argument("--out", default="outputs/report", help="folder for vae_report.{md,png,json}")
    parser.add_argument("--title", default=None)
    args = parser.parse_args(argv)
    missing = [p for p in args.inputs if not Path(p).exists()]
    if missing:
        print(f"error: report input(s) not found: {', '.join(missing)}", file=sys.stderr)
        return 2
    try:
        result = write_report(args.inputs, args.out, args.title)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(result["text"])
    print(f"wrote {result['markdown']}, {result['png']}, {result['json']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
