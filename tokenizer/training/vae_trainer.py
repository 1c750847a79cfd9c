"""Video-VAE training under accelerate: one loop for every model and stage (see ``vae_config`` for the stages).

One optimisation step (1-based ``step``):

1. the data stream hands this process its batch (one bucket for all processes in mixed-shape training);
2. the phase of ``step`` decides which parameter groups are frozen (DeCo-VAE decoupled adaptation);
3. generator pass: reconstruction, eq. 9 loss (L1, LPIPS, KL, and from ``loss.gan_start`` the adaptive-weighted
   adversarial term through the discriminator, whose parameters do not take gradients here);
4. discriminator pass (GAN active): hinge loss on the input and the detached reconstruction;
5. all processes agree whether every loss and gradient norm is finite; if not, the step is skipped (no weight,
   optimiser, scheduler or EMA changes; the data moves on), and after ``train.max_nonfinite`` in a row the run
   stops, its last checkpoint untouched;
6. optimiser steps, schedulers, EMA; log, reconstruction samples and checkpoints at their intervals.

The run resumes from the run folder's ``latest`` checkpoint whenever it exists, and then takes exactly the steps
an uninterrupted run would have taken (bit-exact on CPU).
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn
from torch.utils.data import Dataset

from ..base import VideoVAE
from ..config import ConfigError, from_dict, to_dict
from ..data import build_dataset
from ..data.video_io import video_to_uint8, write_video
from ..discriminator import PatchDiscriminator3D
from ..losses import VAELoss
from ..registry import build_vae
from .data import BucketedStream, ClipStream
from .ema import EMA
from .guard import NonFiniteGuard
from .loop import TrainLoop
from .monitor import RunMonitor
from .rundir import EMA as EMA_FILE
from .rundir import RunDir
from .samples import contact_sheet, motion_panels, panel_grid
from .state import derive_seed, restore_rng, seed_everything
from .trackers import accelerator_kwargs, log_image, tracker_names
from .vae_config import VAETrainConfig, active_phase, lr_factor, validate
from .vae_parts import (CachedItems, bucket_data_configs, find_last_layer, load_init_weights, parameter_groups,
                        video_of)

STATE_FORMAT = 1
HISTORY = 10_000  # steps of per-step losses kept in memory (the log file has them all at log_every)


# --- the trainer -----------------------------------------------------------------------------------------------
class VAETrainer(TrainLoop):
    """Builds everything a run needs from a :class:`VAETrainConfig`, resumes if it can, and trains.

    Args:
        cfg: the resolved config.
        datasets: optional datasets (one per bucket) instead of ``build_dataset(cfg.data)``.
        accelerator: an existing ``accelerate.Accelerator`` (default: one built from ``cfg.train``).
    """

    def __init__(self, cfg: VAETrainConfig, datasets: Sequence[Dataset] | None = None, accelerator: Any = None):
        validate(cfg)
        self.cfg = cfg
        t = cfg.train
        self.accelerator = accelerator or self._make_accelerator()
        acc = self.accelerator
        self.run: RunDir | None = None  # created by setup(): a dry run writes nothing
        self.device = acc.device

        # models (identical on every process: same seed; DDP also broadcasts rank 0's weights)
        seed_everything(t.seed)
        try:
            self.model: VideoVAE = build_vae(cfg.model.name, **cfg.model.config)
        except TypeError as err:  # a field the preset does not have
            raise ConfigError(f"model.config: {err}") from None
        if cfg.model.gradient_checkpointing:
            self.model.enable_gradient_checkpointing(True)
        self.groups = parameter_groups(self.model)
        self._check_phase_groups()
        self._check_start_files()
        self.disc = PatchDiscriminator3D(cfg.disc) if cfg.loss.gan_weight > 0 else None
        self.loss = VAELoss(cfg.loss, seed=t.seed).to(self.device) if t.stage == "vae" else None
        self.motion_loss = self._motion_objective() if t.stage == "motion" else None

        # data
        pairs = bucket_data_configs(cfg)
        known_motion = t.stage == "motion" and cfg.motion_loss.objective == "known_motion"
        for dcfg, _ in ([] if known_motion else pairs):  # known-motion pairs are frame pairs, not clips
            self.model.check_frames(dcfg.num_frames)
            s = self.model.compression[1]
            if dcfg.resolution % s:
                raise ConfigError(f"data.resolution={dcfg.resolution} is not a multiple of {self.model.name}'s "
                                  f"spatial compression {s}")
        if datasets is None and known_motion:
            from ..motion.pairs import KnownMotionPairs

            datasets = [KnownMotionPairs(cfg.motion_pairs)]
        if datasets is None:
            datasets = [build_dataset(dcfg) for dcfg, _ in pairs]
        if len(datasets) != len(pairs):
            raise ValueError(f"{len(datasets)} datasets given for {len(pairs)} buckets")
        if t.cache_items:
            datasets = [CachedItems(d) for d in datasets]
        self.datasets = list(datasets)
        streams = [ClipStream(d, bs, seed=derive_seed(t.seed, i), rank=acc.process_index,
                              world_size=acc.num_processes, num_workers=t.num_workers)
                   for i, (d, (_, bs)) in enumerate(zip(self.datasets, pairs))]
        self.stream = BucketedStream(streams, seed=t.seed, weights=[b.weight for b in cfg.buckets] or None)

        # optimisers (linear warm-up, then constant or cosine: vae_config.lr_factor; schedulers step once per taken
        # step, so a skipped step does not advance the schedule)
        o = cfg.optim
        adam = dict(betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)
        self.opt_g = torch.optim.Adam(self.model.parameters(), lr=o.lr, **adam)
        self.sched_g = torch.optim.lr_scheduler.LambdaLR(self.opt_g, self._lr_factor)
        self.opt_d = self.sched_d = None
        if self.disc is not None:
            self.opt_d = torch.optim.Adam(self.disc.parameters(), lr=o.disc_lr or o.lr, **adam)
            self.sched_d = torch.optim.lr_scheduler.LambdaLR(self.opt_d, self._lr_factor)

        self.step = 0
        self._frozen: set[str] | None = None
        self._last_layer: nn.Parameter | None = None
        self.history: list[dict[str, float]] = []  # this process's losses of the last HISTORY taken steps
        self.guard = NonFiniteGuard(t.max_nonfinite, any_rank=self._any_rank, log=self._warn)
        self.monitor: RunMonitor | None = None
        self._last_good: str | None = None

    # --- construction helpers ------------------------------------------------------------------------------
    def _make_accelerator(self):
        from accelerate import Accelerator, DistributedDataParallelKwargs

        t = self.cfg.train
        # frozen groups have no gradient: DDP must be told that some parameters may go unused
        ddp = DistributedDataParallelKwargs(find_unused_parameters=bool(self.cfg.phases) or t.stage == "motion")
        return Accelerator(cpu=t.cpu, mixed_precision=t.mixed_precision, kwargs_handlers=[ddp],
                           **accelerator_kwargs(t.tracker, t.run_dir))

    def _lr_factor(self, taken: int) -> float:
        return lr_factor(self.cfg, taken)

    def _check_phase_groups(self) -> None:
        names = set(self.groups)
        for i, p in enumerate(self.cfg.phases):
            unknown = sorted(set(p.freeze) - names)
            if unknown:
                raise ConfigError(f"phases.{i}.freeze: unknown parameter group(s) {unknown} of "
                                  f"{self.cfg.model.name}; groups: {', '.join(sorted(names))}")
        if self.cfg.train.stage == "motion" and "motion" not in names:
            raise ConfigError(f"train.stage=motion needs a model with a 'motion' parameter group; "
                              f"{self.cfg.model.name} has {', '.join(sorted(names))}")

    def _check_start_files(self) -> None:
        """A fresh run needs its start weights (init_from, init_from_run); a resumed one takes them from its
        checkpoint. Say so before any work."""
        m = self.cfg.model
        if RunDir(self.cfg.train.run_dir, keep_last=None, is_main=False).latest() is not None:
            return  # resuming
        for key, path in (("model.init_from", m.init_from), ("model.init_from_run", m.init_from_run)):
            if path and not Path(path).exists():
                raise FileNotFoundError(f"{key}={path}: not found (it is read at the start of a fresh run)")

    def _motion_objective(self):
        """DeCo-VAE's motion pre-training objective (``tokenizer.motion.motion_pretrain_loss``) with this config's
        loss weights."""
        from functools import partial

        from ..motion import motion_pretrain_loss

        return partial(motion_pretrain_loss, cfg=self.cfg.motion_loss)

    # --- freezing -------------------------------------------------------------------------------------------
    def frozen_groups(self, step: int) -> set[str]:
        """Parameter groups not trained at ``step`` (phase freeze lists; the motion stage trains 'motion' only)."""
        if self.cfg.train.stage == "motion":
            return set(self.groups) - {"motion"}
        i = active_phase(self.cfg, step)
        return set(self.cfg.phases[i].freeze) if i is not None else set()

    def _apply_phase(self, step: int) -> None:
        """Set requires_grad per group for ``step``; log when the frozen set changes."""
        frozen = self.frozen_groups(step)
        if frozen == self._frozen:
            return
        for name, params in self.groups.items():
            for p in params:
                p.requires_grad_(name not in frozen)
        i = active_phase(self.cfg, step)
        label = f"phase {i} '{self.cfg.phases[i].name}'" if i is not None else f"stage {self.cfg.train.stage}"
        self.monitor.info(f"step {step}: {label}; frozen groups: {', '.join(sorted(frozen)) or 'none'}")
        self._frozen = frozen

    # --- state ----------------------------------------------------------------------------------------------
    def model_record(self) -> dict:
        """{"name", "config"}: what VideoVAE.load needs beside the weights."""
        return {"name": self.model.name, "config": to_dict(self.model.config)}

    def state_dict(self) -> dict:
        acc = self.accelerator
        s = {"format": STATE_FORMAT, "step": self.step, "record": self.model_record(),
             "model": acc.unwrap_model(self.model_ddp).state_dict(), "ema": self.ema.state_dict(),
             "opt_g": self.opt_g.state_dict(), "sched_g": self.sched_g.state_dict(),
             "data": self.stream.state_dict(), "guard": self.guard.state_dict()}
        if self.disc is not None:
            s.update(disc=acc.unwrap_model(self.disc_ddp).state_dict(), opt_d=self.opt_d.state_dict(),
                     sched_d=self.sched_d.state_dict())
        return s

    def load_state_dict(self, s: dict) -> None:
        acc = self.accelerator
        if s.get("format") != STATE_FORMAT:
            raise ValueError(f"unsupported training-state format {s.get('format')}")
        rec = s["record"]
        if rec["name"] != self.model.name:
            raise ConfigError(f"the run folder holds a '{rec['name']}' run; this config trains '{self.model.name}'")
        model = acc.unwrap_model(self.model_ddp)
        model.config = from_dict(type(model.config), rec["config"], source="the checkpoint")  # e.g. init_from's scaling
        model.load_state_dict(s["model"])
        self.ema.load_state_dict(s["ema"])
        self.opt_g.load_state_dict(s["opt_g"])
        self.sched_g.load_state_dict(s["sched_g"])
        if self.disc is not None:
            if "disc" not in s:
                raise ConfigError("the checkpoint has no discriminator (it was saved with loss.gan_weight=0)")
            acc.unwrap_model(self.disc_ddp).load_state_dict(s["disc"])
            self.opt_d.load_state_dict(s["opt_d"])
            self.sched_d.load_state_dict(s["sched_d"])
        self.stream.load_state_dict(s["data"])
        self.guard.load_state_dict(s["guard"])
        self.step = int(s["step"])

    def save(self) -> Path:
        acc = self.accelerator
        weights = None
        if acc.is_main_process:
            weights = {EMA_FILE: (self.ema.state_dict(), self.model_record())}
        return self._write_checkpoint(self.state_dict() if acc.is_main_process else {}, weights)

    # --- setup: fresh start or resume ------------------------------------------------------------------------
    def setup(self) -> None:
        cfg, acc, t = self.cfg, self.accelerator, self.cfg.train
        ckpt = self._run_folder()
        if ckpt is None:
            self._fresh_start()
        # wrap for the launch (DDP on several processes); EMA and state loading use the unwrapped modules
        self.disc_ddp = None
        if t.stage == "motion":
            # the motion objective calls into the model's motion module, not its forward: no DDP wrapper,
            # gradients are averaged over processes by hand (_sync_grads)
            self.model_ddp = self.model.to(self.device)
            self.opt_g = acc.prepare(self.opt_g)
        elif self.disc is not None:
            self.model_ddp, self.disc_ddp, self.opt_g, self.opt_d = acc.prepare(self.model, self.disc, self.opt_g,
                                                                                self.opt_d)
        else:
            self.model_ddp, self.opt_g = acc.prepare(self.model, self.opt_g)
        self.ema = EMA(acc.unwrap_model(self.model_ddp), t.ema_decay)
        rng = self._open_run(ckpt)
        m = self.monitor
        if ckpt is None:
            m.info(f"new run in {self.run.root}: {cfg.model.name}, stage {t.stage}, {acc.num_processes} process(es) "
                   f"on {acc.device}, {sum(p.numel() for p in self.model.parameters()):,} parameters")
        for i in range(len(self.datasets)):
            clips = self._clip_dataset(i)
            if clips is not None:
                m.info(f"bucket {i}: {clips.report()}")
        # randomness of the steps: per process; restored exactly on resume
        if rng is not None:
            restore_rng(rng)
        else:
            seed_everything(derive_seed(t.seed, acc.process_index, 1))
        self._samples = self._sample_clips() if acc.is_main_process else None

    def _fresh_start(self) -> None:
        cfg = self.cfg.model
        if cfg.init_from:
            init = getattr(self.model, "init_from_image_vae", None)
            if init is None:
                raise ConfigError(f"model.init_from: {cfg.name} cannot be initialised from an image VAE")
            init(cfg.init_from)
        if cfg.init_from_run:
            state = load_init_weights(cfg.init_from_run, str(cfg.init_weights))
            missing, unexpected = self.model.load_state_dict(state, strict=False)
            if missing or unexpected:
                raise ConfigError(f"model.init_from_run={cfg.init_from_run} does not fit {cfg.name}: "
                                  f"missing {missing[:5]}, unexpected {unexpected[:5]}")

    def _clip_dataset(self, bucket: int):
        """The video dataset behind a bucket (None for other datasets), whose report names broken videos."""
        d = self.datasets[bucket]
        d = d if hasattr(d, "report") else getattr(d, "dataset", None)
        return d if hasattr(d, "note_read_errors") else None

    def finish(self) -> None:
        """Say which videos failed while being read during this launch (those skipped at start were logged then)."""
        for i in range(len(self.datasets)):
            clips = self._clip_dataset(i)
            if clips is not None and clips.read_failures:
                self.monitor.warning(f"bucket {i}: {len(clips.read_failures)} video(s) failed at read time (their "
                                     "clips came from the next usable video): "
                                     + "; ".join(f"{p}: {r}" for p, r in clips.read_failures))

    # --- the loop -------------------------------------------------------------------------------------------
    def train_step(self) -> bool:
        """One step (taken or skipped); True if taken."""
        cfg, acc, t = self.cfg, self.accelerator, self.cfg.train
        step = self.step + 1
        t0 = time.perf_counter()
        bucket, batch = self.stream.next(self.step)
        if isinstance(batch, dict) and any(batch.get("read_error", ())):  # read in a DataLoader worker
            clips = self._clip_dataset(bucket)
            if clips is not None:
                clips.note_read_errors(batch)
        x = video_of(batch).to(self.device, non_blocking=True)
        self._apply_phase(step)
        self.model_ddp.train()
        losses: dict[str, torch.Tensor] = {}
        with acc.autocast():
            if t.stage == "motion":  # the whole batch: known-motion pairs carry their true flow
                on_device = {k: v.to(self.device) for k, v in batch.items() if torch.is_tensor(v)} \
                    if isinstance(batch, dict) else x
                g_loss, logs = self.motion_loss(acc.unwrap_model(self.model_ddp), on_device)
                logs = {"loss": g_loss.detach(), **logs}
                x_hat = None
            else:
                x_hat, posterior = self.model_ddp(x)
                disc = None
                if self.loss.gan_active(step):
                    disc = acc.unwrap_model(self.disc_ddp)
                    disc.requires_grad_(False)  # the generator pass only needs d D / d x_hat
                last = None
                if disc is not None and cfg.loss.adaptive_weight:
                    if self._last_layer is None:
                        self._last_layer = find_last_layer(acc.unwrap_model(self.model_ddp), cfg.model.last_layer)
                    last = self._last_layer
                g_loss, logs = self.loss.generator(x, x_hat, posterior, step, disc, last)
            losses.update(logs)
            d_loss = None
            if x_hat is not None and self.loss.gan_active(step):
                acc.unwrap_model(self.disc_ddp).requires_grad_(True)
                self.disc_ddp.train()
                d_loss, d_logs = self.loss.discriminator(x, x_hat, self.disc_ddp)
                losses.update(d_logs)
        check = {"loss": g_loss} | ({"d_loss": d_loss} if d_loss is not None else {})
        ok = self.guard.check(step, check, self._last_good, final=False)
        if ok:
            acc.backward(g_loss)
            if t.stage == "motion":
                self._sync_grads()
            gn = {"grad_norm": acc.clip_grad_norm_([p for p in self.model.parameters() if p.grad is not None],
                                                   cfg.optim.max_grad_norm or math.inf)}
            if d_loss is not None:
                acc.backward(d_loss)
                gn["d_grad_norm"] = acc.clip_grad_norm_(list(self.disc.parameters()), math.inf)
            ok = self.guard.check(step, gn, self._last_good)
            losses.update({k: v.detach() for k, v in gn.items()})
        if ok:
            self.opt_g.step()
            self.sched_g.step()
            if d_loss is not None:
                self.opt_d.step()
                self.sched_d.step()
        self.opt_g.zero_grad(set_to_none=True)
        if self.opt_d is not None:
            self.opt_d.zero_grad(set_to_none=True)
        if not ok:
            return False
        self.step = step
        self.ema.update(acc.unwrap_model(self.model_ddp), step)
        values = {k: float(v) for k, v in losses.items()}
        self.history.append(values)
        if len(self.history) > 2 * HISTORY:  # bounded memory over a 500k-step run
            del self.history[:-HISTORY]
        self._after_step(step, values, time.perf_counter() - t0)
        return True

    def _sync_grads(self) -> None:
        """Average gradients over processes (the motion stage runs without a DDP wrapper)."""
        if self.accelerator.num_processes == 1:
            return
        import torch.distributed as dist

        for p in self.model.parameters():
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= self.accelerator.num_processes

    def _after_step(self, step: int, values: dict[str, float], dt: float) -> None:
        t, m = self.cfg.train, self.monitor
        m.step(step, {"loss": values["loss"]})
        if step % t.log_every == 0 or step == t.max_steps:
            lr = self.sched_g.get_last_lr()[0]
            m.scalars(step, {f"train/{k}": v for k, v in values.items()} | {"train/lr": lr})
            text = " ".join(f"{k}={v:.5g}" for k, v in values.items())
            m.info(f"step {step}/{t.max_steps} {text} lr={lr:.3g} {m.rate(step):.3g} it/s")
        if step % t.sample_every == 0 or step == t.max_steps:
            self.write_samples(step)
        if step % t.checkpoint_every == 0 or step == t.max_steps:
            self.save()

    # --- reconstruction samples -----------------------------------------------------------------------------
    def _sample_clips(self) -> torch.Tensor:
        """The first ``num_samples`` clips of bucket 0 at epoch 0: the same clips at every sample step."""
        ds = self.datasets[0]
        base = getattr(ds, "dataset", ds)
        epoch = getattr(base, "epoch", None)
        if epoch is not None:
            base.set_epoch(0)
        clips = [video_of(ds[i]) for i in range(min(self.cfg.train.num_samples, len(ds)))]
        if epoch is not None:
            base.set_epoch(epoch)
        return torch.stack(clips)

    @torch.no_grad()
    def write_samples(self, step: int) -> Path | None:
        """input | reconstruction (EMA weights) [| DeCo components], labelled, as a gif/mp4 in ``samples/``; a still
        contact sheet of it goes to the trackers."""
        if not self.accelerator.is_main_process:
            return None
        model = self.ema.module
        x = self._samples.to(self.device)
        rows, labels = [], []
        for i in range(x.shape[0]):
            xi = x[i:i + 1]
            if self.cfg.train.stage == "motion":  # input | W(x_0, M(x_t, x_0)) | flow | scale
                m, pred = model.motion(xi[0].transpose(0, 1), xi[:, :, 0].expand(xi.shape[2], -1, -1, -1))
                flow = motion_panels(m.transpose(0, 1))
                rows.append([xi[0], pred.transpose(0, 1).clamp(-1, 1)] + flow)
                labels.append(["input", "warped frame 0", "flow", "scale"][:len(rows[-1])])
                continue
            x_hat = model.decode(model.encode(xi).mode()).clamp(-1, 1)
            panels, names = [xi[0], x_hat[0]], ["input", "reconstruction"]
            if getattr(model, "has_components", False):  # DeCo-VAE: keyframe, motion (flow picture + scale), residual
                c = model.decoupled_components(xi)
                flow = motion_panels(c["motion"][0])
                panels += [c["keyframe"][0]] + flow + [c["residual"][0].clamp(-1, 1)]
                names += ["keyframe"] + ["flow", "scale"][:len(flow)] + ["residual"]
            rows.append(panels)
            labels.append(names)
        path = self.run.samples_dir / f"step-{step:06d}.{self.cfg.train.sample_format}"
        grid = panel_grid(rows, labels)
        write_video(path, video_to_uint8(grid), fps=self.cfg.train.sample_fps)
        if tracker_names(self.cfg.train.tracker):
            sheet = contact_sheet([grid], [f"step {step}: EMA reconstructions"])
            log_image(self.accelerator, f"samples/{self.cfg.train.stage}", sheet, step)
        return path


def train(cfg: VAETrainConfig, datasets: Sequence[Dataset] | None = None, accelerator: Any = None) -> dict:
    """Build a :class:`VAETrainer` and run it to ``train.max_steps``."""
    return VAETrainer(cfg, datasets=datasets, accelerator=accelerator).fit()
