"""The installable package: one `vidtok` console command for every stage, configs found from a checkout and from an
installed wheel. The slow test builds the wheel, installs it into a fresh venv and runs commands outside the
repository (.ci/run runs it after the suite)."""
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from pipelines.cli import COMMANDS, main
from tokenizer.config import config_roots, find_config, load_config
from tokenizer.data import DataConfig

ROOT = Path(__file__).resolve().parents[1]


def test_every_config_folder_ships_in_the_wheel():
    """pyproject's data-files name every folder of configs/ (a new folder must be added there)."""
    files = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["data-files"]
    shipped = {pattern for patterns in files.values() for pattern in patterns}
    folders = {f"{p.parent.relative_to(ROOT)}/*.yaml" for p in (ROOT / "configs").rglob("*.yaml")}
    assert folders == shipped
    assert all(target == f"share/vidtok-lab/{pats[0].rsplit('/', 1)[0]}" for target, pats in files.items())


def test_bundled_configs_are_found_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert str(ROOT) in config_roots()
    found = find_config("configs/data/samples_tiny.yaml")
    assert found == ROOT / "configs/data/samples_tiny.yaml"
    assert load_config(DataConfig, "configs/data/samples_tiny.yaml").kind == "samples"
    # a file of that path in the current folder wins over the bundled one
    (tmp_path / "configs" / "data").mkdir(parents=True)
    (tmp_path / "configs/data/samples_tiny.yaml").write_text("kind: samples\nresolution: 48\n")
    assert load_config(DataConfig, "configs/data/samples_tiny.yaml").resolution == 48


def test_vidtok_command_lists_and_dispatches(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("cache", "train-vae", "train-latte", "sample", "fvd", "report", "demo",
                                        "eval-recon"))
    assert main(["nope"]) == 2 and "unknown command" in capsys.readouterr().err
    with pytest.raises(SystemExit) as done:  # argparse's --help of the subcommand: it is the module's main
        main(["cache", "--help"])
    assert done.value.code == 0 and "--vae" in capsys.readouterr().out
    assert main(["configs"]) == 0 and "configs/tokenizer/plain_tiny.yaml" in capsys.readouterr().out
    import importlib

    assert all(callable(importlib.import_module(mod).main) for mod, _ in COMMANDS.values())


def test_helper_scripts_use_an_environment_that_already_runs_the_toolkit(tmp_path):
    """scripts/cache_latents.sh in a working environment runs there: no ./.venv is created (it used to build one
    and install 6 GB)."""
    root = tmp_path / "checkout"
    shutil.copytree(ROOT / "scripts", root / "scripts")
    env = {k: v for k, v in os.environ.items() if k not in ("VIDTOK_VENV", "VIRTUAL_ENV")}
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    env["PYTHONPATH"] = str(ROOT)  # the toolkit imports from the real checkout
    r = subprocess.run(["bash", str(root / "scripts" / "cache_latents.sh"), "--help"], capture_output=True,
                       text=True, env=env, timeout=120)
    assert r.returncode == 0 and "--vae" in r.stdout, r.stderr
    assert "using the active environment" in r.stderr and not (root / ".venv").exists()


@pytest.mark.slow
def test_wheel_installs_and_runs_outside_the_checkout(tmp_path):
    """Build the wheel from a copy of the sources, install it (no deps) into a fresh venv whose dependencies come
    from this environment (a .pth file), and run `vidtok` from a folder with no configs/: --help, the bundled
    config list, and a cache dry run that reads configs/data/samples_tiny.yaml from the wheel's copy."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "tokenizer", "diffusion", "pipelines", "configs"):
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy2
        copy(ROOT / name, src / name, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                         if (ROOT / name).is_dir() else {}))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    pip = [sys.executable, "-m", "pip"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"),
                    str(src)], check=True, env=env, cwd=tmp_path)
    wheel = next((tmp_path / "dist").glob("vidtok_lab-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, env=env)
    py = venv / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], check=True,
                          capture_output=True, text=True, env=env).stdout.strip()
    deps = [p for p in sys.path if p.endswith("site-packages")]
    (Path(site) / "_vidtok_deps.pth").write_text("\n".join(deps) + "\n")  # plain paths: their .pth files stay off
    subprocess.run([*pip, "--python", str(py), "install", "--no-deps", "-q", str(wheel)], check=True, env=env)
    work = tmp_path / "elsewhere"
    work.mkdir()

    def vidtok(*args):
        return subprocess.run([str(venv / "bin" / "vidtok"), *args], capture_output=True, text=True, env=env,
                              cwd=work, timeout=300)

    where = subprocess.run([str(py), "-c", "import tokenizer; print(tokenizer.__file__)"], capture_output=True,
                           text=True, env=env, cwd=work).stdout
    assert where.startswith(site), where  # the wheel's copy, not the checkout
    r = vidtok("--help")
    assert r.returncode == 0 and "train-latte" in r.stdout, r.stderr
    r = vidtok("configs")
    assert r.returncode == 0 and str(venv) in r.stdout and "configs/data/samples_tiny.yaml" in r.stdout, r.stderr
    r = vidtok("cache", "--help")
    assert r.returncode == 0 and "--data" in r.stdout, r.stderr
    r = vidtok("cache", "--vae", "plain-tiny", "--data", "configs/data/samples_tiny.yaml", "--out", "cache",
               "--dry-run", "num_frames=9", "resolution=32")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "samples" in r.stdout and not (work / "cache").exists()  # planned, nothing written
