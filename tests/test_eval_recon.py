"""pipelines/eval_recon.py: Table-1-style reconstruction metrics of a saved VAE on real sample clips."""
import json
import time

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio

from pipelines.eval_recon import main
from tokenizer import build_vae
from tokenizer.data import build_dataset, load_data_config

DATA = "configs/data/samples_tiny.yaml"
QUICK = ["--frames", "9", "--resolution", "32", "--lpips-net", "squeeze", "--lpips-random-backbone", "--num-clips", "4",
         "--fvd-detector", "random", "--fvd-resolution", "32", "--num-workers", "0"]


@pytest.fixture(scope="module")
def saved_vae(tmp_path_factory):
    torch.manual_seed(0)
    vae = build_vae("plain-tiny")
    folder = tmp_path_factory.mktemp("vae")
    vae.save_pretrained(folder)
    return folder, vae.eval()


@pytest.fixture(scope="module")
def results(saved_vae, tmp_path_factory):
    folder, _ = saved_vae
    out = {}
    for bs in (1, 3):
        d = tmp_path_factory.mktemp(f"bs{bs}")
        assert main(["--vae", "plain-tiny", "--ckpt", str(folder), "--data", DATA, *QUICK, "--batch-size", str(bs),
                     "--out", str(d)]) == 0
        out[bs] = (json.loads((d / "recon.json").read_text()), (d / "recon.md").read_text())
    return out


def test_batch_size_does_not_change_the_numbers(results):
    a, b = results[1][0]["metrics"], results[3][0]["metrics"]
    assert a["num_videos"] == b["num_videos"] == 4  # the first 4 clips of samples_tiny (4 videos x 2 clips)
    for key in ("psnr", "ssim", "lpips"):  # bit for bit
        assert a[key] == b[key] and a["per_frame"][key] == b["per_frame"][key]
        assert a["first_frame"][key] == b["first_frame"][key] and a["later_frames"][key] == b["later_frames"][key]
    assert a["rfvd"]["value"] == b["rfvd"]["value"]


def test_psnr_and_first_frame_match_scikit_image(results, saved_vae):
    """The pipeline's PSNR equals scikit-image's on the VAE's own mode reconstructions of the same clips."""
    _, vae = saved_vae
    cfg = load_data_config(DATA, ["num_frames=9", "resolution=32"])
    ds = build_dataset(cfg)
    per_frame = []
    with torch.no_grad():
        for i in range(4):
            x = ds[i]["video"][None]
            y = vae.decode(vae.encode(x).mode()).clamp(-1, 1)
            xu, yu = ((x[0] + 1) / 2).double().numpy(), ((y[0] + 1) / 2).double().numpy()
            per_frame.append([peak_signal_noise_ratio(xu[:, t], yu[:, t], data_range=1.0) for t in range(9)])
    per_frame = np.array(per_frame)
    m = results[1][0]["metrics"]
    assert m["psnr"] == pytest.approx(per_frame.mean(), rel=1e-5)
    assert m["first_frame"]["psnr"] == pytest.approx(per_frame[:, 0].mean(), rel=1e-5)
    assert m["later_frames"]["psnr"] == pytest.approx(per_frame[:, 1:].mean(), rel=1e-5)
    assert m["per_frame"]["psnr"] == pytest.approx(per_frame.mean(0).tolist(), rel=1e-5)


def test_report_is_a_labelled_table_row(results):
    record, md = results[1]
    assert record["vae"] == "plain-tiny" and record["frames"] == 9 and record["compression"] == [4, 8, 8]
    m = record["metrics"]
    row = f"| plain-tiny | 4x8x8 | 16 | {m['psnr']:.2f} | {m['ssim']:.4f} | {m['lpips']:.4f} | {m['rfvd']['value']:.1f} |"
    assert row in md and "| first frame |" in md and "| frames 1.. |" in md
    assert "RANDOM-BACKBONE LPIPS" in md and "RANDOM-INIT I3D" in md and "not the protocol's 224" in md
    # encode/decode time per clip for the report's table: 3 timed clips after the warm-up one
    assert record["encode_ms"] > 0 and record["decode_ms"] > 0 and "over 3 clips" in record["timing"]
    assert f"decode {record['decode_ms']:.1f} ms" in md


def test_timer_skips_the_warm_up_clip_and_averages_the_rest():
    from pipelines.eval_recon import CodecTimer

    def encode(v):
        time.sleep(0.02)
        return v * 2

    timer = CodecTimer("cpu")
    for _ in range(3):
        z = timer("encode", encode, torch.ones(1))
        assert timer("decode", lambda v: v + 1, z).item() == 3.0
    s = timer.summary()
    assert s["clips"] == 2 and s["encode_ms"] >= 20 and 0 <= s["decode_ms"] < s["encode_ms"]


def test_clear_errors(saved_vae, capsys):
    folder, _ = saved_vae
    assert main(["--vae", "vcvae-tiny", "--ckpt", str(folder), "--data", DATA]) == 2
    assert "holds a 'plain-tiny' VAE" in capsys.readouterr().err
    assert main(["--vae", "plain-tiny", "--ckpt", str(folder), "--data", DATA, "--frames", "16"]) == 2
    assert "1 + 4k" in capsys.readouterr().err
