"""Trackers (any accelerate supports; a missing package is a config error naming it) and the labelled pictures the
trainers and pipelines/sample.py write (label strips, contact sheets of evenly spaced frames)."""
import pytest
import torch

from tokenizer.config import ConfigError, load_config
from tokenizer.training.samples import LABEL_HEIGHT, contact_sheet, labelled_row, text_strip
from tokenizer.training.trackers import check_tracker, tracker_names
from tokenizer.training.vae_config import VAETrainConfig

from diffusion.train_config import LatteTrainConfig


def _missing_tracker():
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS, get_available_trackers

    have = {str(t) for t in get_available_trackers()}
    return next(n for n in ("wandb", "aim", "mlflow", "comet_ml", "dvclive", "swanlab") if n not in have
                and n in LOGGER_TYPE_TO_CLASS)


def test_tracker_values():
    assert tracker_names("none") == [] and tracker_names("tensorboard, wandb") == ["tensorboard", "wandb"]
    check_tracker("train.tracker", "tensorboard")
    check_tracker("train.tracker", "all")
    with pytest.raises(ConfigError, match="unknown tracker 'tensorbored'.*wandb"):
        check_tracker("train.tracker", "tensorbored")
    with pytest.raises(ConfigError, match="cannot be combined"):
        check_tracker("train.tracker", "none,tensorboard")


@pytest.mark.parametrize("schema,config", [(VAETrainConfig, "configs/tokenizer/plain_tiny.yaml"),
                                           (LatteTrainConfig, "configs/diffusion/latte_tiny.yaml")])
def test_a_tracker_without_its_package_is_a_config_error_naming_it(schema, config):
    from diffusion.train_config import validate as validate_latte
    from tokenizer.training.vae_config import validate as validate_vae

    name = _missing_tracker()
    validate = validate_vae if schema is VAETrainConfig else validate_latte
    with pytest.raises(ConfigError, match=f"needs the '{name}' package.*pip install {name}"):
        extra = ["data.cache_dir=x"] if schema is LatteTrainConfig else []
        load_config(schema, config, [f"train.tracker=tensorboard,{name}", "train.run_dir=x", *extra],
                    validate=validate)


def test_label_strip_draws_the_text_in_its_column():
    strip = text_strip(["input", ""], [40, 40])  # 3 h (40 + 2 + 40)
    assert strip.shape == (3, LABEL_HEIGHT, 82)
    assert (strip[:, :, :40] < 0).any() and (strip[:, :, 42:] == 1).all()  # text left, blank right
    assert not torch.equal(text_strip(["input"], [40]), text_strip(["output"], [40]))
    row = labelled_row([torch.zeros(3, 5, 16, 16), torch.zeros(3, 5, 16, 16)], ["a", "b"])
    assert row.shape == (3, 5, LABEL_HEIGHT + 16, 34)
    with pytest.raises(ValueError, match="labels"):
        labelled_row([torch.zeros(3, 5, 16, 16)], ["a", "b"])


def test_contact_sheet_shows_evenly_spaced_frames_in_order():
    t = 9
    video = torch.linspace(-1, 1, t).view(1, t, 1, 1).expand(3, t, 8, 8)  # frame i has one grey value
    sheet = contact_sheet([video, video], ["first", "second"], num_frames=3)
    row_h = 2 * LABEL_HEIGHT + 8
    assert sheet.shape == (2 * row_h + 2, 3 * 8 + 2 * 2, 3)
    picked = [int(sheet[2 * LABEL_HEIGHT + 4, 4 + k * 10, 0]) for k in range(3)]  # centre of each frame
    want = [round((float(video[0, i, 0, 0]) + 1) * 127.5) for i in (0, 4, 8)]
    assert picked == want
