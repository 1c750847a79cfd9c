"""Assertions shared by several test modules."""
import torch


def assert_same(a, b, path=""):
    """Nested dicts / lists / tensors are equal, bit for bit; ``path`` names the first difference."""
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


class Poisoned(torch.utils.data.Dataset):
    """Items of ``dataset`` (dicts of tensors) with one NaN in ``item[key]`` on the chosen reads (counted from 1
    across all indices): corrupt data, the way a NaN enters a real run."""

    def __init__(self, dataset, bad_reads, key):
        self.dataset, self.bad, self.key, self.reads = dataset, set(bad_reads), key, 0

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        self.reads += 1
        item = dict(self.dataset[i])
        if self.reads in self.bad:
            item[self.key] = item[self.key].clone()
            item[self.key].view(-1)[item[self.key].numel() // 2] = float("nan")
        return item


def tensorboard_images(run_dir, tag):
    """{step: (H, W, 3) uint8 picture} of the images logged under ``tag`` in a run's tensorboard events."""
    import io

    import numpy as np
    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import IMAGES, EventAccumulator

    out = {}
    for events in (run_dir / "trackers").rglob("events.out.tfevents*"):
        acc = EventAccumulator(str(events.parent), size_guidance={IMAGES: 0}).Reload()
        if tag in acc.Tags()["images"]:
            for ev in acc.Images(tag):
                out[ev.step] = np.asarray(Image.open(io.BytesIO(ev.encoded_image_string)).convert("RGB"))
    return out
