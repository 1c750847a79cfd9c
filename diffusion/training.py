"""Latte training on a latent cache under accelerate, on the run-directory machinery of ``tokenizer.training``.

One optimisation step (1-based ``step``), ``grad_accum`` micro-batches of ``batch_size`` clips on every process:

1. the stream hands this process its slice of the next global micro-batch (normalised latents, labels);
2. every clip draws its timestep t ~ U{0..T-1}, its noise and its label-drop coin from a generator seeded by
   (seed, step, its position in the global batch) -- so the draws, and with them the result, do not depend on how
   the global batch is split over processes and micro-batches;
3. the hybrid loss (eps MSE + VLB, IDDPM/DiT) is averaged over the clip's elements, then over the batch; the
   gradient is averaged over micro-batches (DDP averages it over processes, and syncs on the last micro only);
4. all processes agree whether every loss and the gradient norm are finite; a bad step is skipped (no weight,
   optimiser or EMA change; the data moves on) and ``train.max_nonfinite`` bad steps in a row stop the run;
5. the gradient norm is clipped to ``optim.max_grad_norm`` from step ``optim.clip_start_step + 1`` on (Latte:
   0.1 after 100k steps), AdamW steps, the EMA follows; log, samples and checkpoints at their intervals.

A restart with the same command resumes from the run folder's ``latest`` checkpoint and takes exactly the steps an
uninterrupted run would have taken (bit-exact on CPU).
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from tokenizer.cache import CacheError, LatentCacheDataset, VideoVariants, cache_vae
from tokenizer.config import ConfigError
from tokenizer.io import state_dict_fingerprint
from tokenizer.training import (EMA, ClipStream, NonFiniteGuard, RunDir, RunMonitor, derive_seed,
                                restore_rng, seed_everything)
from tokenizer.training.loop import TrainLoop

from .latte_run import (EMA_FILE, CacheSpec, build_from_record, load_config_vae, load_init_state,
                        open_cache, run_record, write_run_files)
from .parallel import (full_model_state, full_optimizer_state, gradient_sync, load_full_model_state,
                       load_full_optimizer_state, shard_latte, total_norm)
from .train_config import LatteTrainConfig, clip_active, validate

STATE_FORMAT = 1
_DRAW = 0x64726177  # 'draw': the stream of per-clip training draws
_LATENT = 0x6C61746E  # 'latn': the stream of posterior samples in the cache reader
_VARIANT = 0x76617269  # 'vari': the per-epoch draw of each video's cached variant


def make_accelerator(cfg: LatteTrainConfig):
    from accelerate import Accelerator

    t = cfg.train
    return Accelerator(cpu=t.cpu, mixed_precision=t.mixed_precision,
                       log_with=None if t.tracker == "none" else t.tracker, project_dir=t.run_dir)


class LatteTrainer(TrainLoop):
    """Builds a run from a :class:`LatteTrainConfig`, resumes if it can, and trains.

    Args:
        cfg: the resolved config.
        accelerator: an existing ``accelerate.Accelerator`` (default: one built from ``cfg.train``).
        dataset: a map-style dataset of ``{"latent", "label"}`` items instead of the cache reader (tests).
    """

    def __init__(self, cfg: LatteTrainConfig, accelerator: Any = None, dataset: Dataset | None = None):
        from .gaussian_diffusion import GaussianDiffusion
        from .latte import build_latte

        validate(cfg)
        self.cfg = cfg
        t = cfg.train
        self.accelerator = accelerator or make_accelerator(cfg)
        acc = self.accelerator
        self.device = acc.device
        self.run: RunDir | None = None  # created by setup(): a dry run writes nothing

        # the cache, checked against the config and the VAE that will decode (vae.ckpt)
        self.vae = load_config_vae(cfg.vae.ckpt) if cfg.vae.ckpt else None
        self.spec: CacheSpec = open_cache(cfg, self.vae.fingerprint() if self.vae is not None else None)
        d = cfg.data
        self.dataset = dataset if dataset is not None else LatentCacheDataset(
            self.spec.cache_dir, expect_fingerprint=self.spec.vae["fingerprint"], normalize=d.normalize,
            sample=d.sample_posterior, seed=derive_seed(t.seed, _LATENT))
        if dataset is None and d.variants == "one_per_video":  # one cached window x flip per video and epoch
            self.dataset = VideoVariants(self.dataset, seed=derive_seed(t.seed, _VARIANT))
        normalizer = getattr(self.dataset, "normalizer", None)
        if normalizer is None:
            from tokenizer.cache import LatentNormalizer

            normalizer = LatentNormalizer.from_manifest(self.spec.manifest, d.normalize, d.sample_posterior)
        self.normalizer = normalizer
        self.record = run_record(cfg, self.spec, normalizer)
        if cfg.sample.every > 0 and acc.is_main_process and self.vae is None:
            self.vae = self._cache_vae()  # fail now, not at the first sample step

        # model and formulation (identical on every process: same seed; DDP broadcasts rank 0's weights too)
        seed_everything(t.seed)
        self.model: nn.Module = build_latte(cfg.model.name, **self.record["config"])
        self.model.set_gradient_checkpointing(cfg.model.gradient_checkpointing)
        if self.model.y_embedder is not None:
            # label dropout: the trainer draws each clip's coin from its own seed (see draws) and passes the null
            # label itself, so the embedder's coin (from the process's global generator) is switched off
            self.model.y_embedder.dropout_prob = 0.0
        self.diffusion = GaussianDiffusion(num_timesteps=cfg.diffusion.num_timesteps,
                                           beta_schedule=cfg.diffusion.beta_schedule,
                                           learn_sigma=cfg.model.learn_sigma)

        # data: global micro-batch = batch_size x processes; `grad_accum` of them per step
        self.stream = ClipStream(self.dataset, t.batch_size, seed=t.seed, rank=acc.process_index,
                                 world_size=acc.num_processes, num_workers=d.num_workers)
        self.effective_batch = t.batch_size * acc.num_processes * t.grad_accum

        # sharded (FSDP2) only with several processes; the optimiser and the EMA are made in setup(), after it
        self.sharded = t.fsdp and acc.num_processes > 1
        self.opt: torch.optim.Optimizer | None = None
        self.step = 0
        self.history: list[dict[str, float]] = []  # per taken step, the global losses (tests, analysis)
        self.guard = NonFiniteGuard(t.max_nonfinite, any_rank=self._any_rank, log=self._warn)
        self.monitor: RunMonitor | None = None
        self._last_good: str | None = None

    # --- helpers ------------------------------------------------------------------------------------------------
    @property
    def num_parameters(self) -> int:
        """Parameters of the whole model (also when sharded)."""
        return sum(math.prod(p.shape) for p in self.model.parameters())

    def _mean_over_ranks(self, x: torch.Tensor) -> torch.Tensor:
        acc = self.accelerator
        return x if acc.num_processes == 1 else acc.reduce(x.detach().clone(), reduction="mean")

    def draws(self, step: int, positions: list[int], shape: tuple[int, ...]) -> tuple[torch.Tensor, ...]:
        """(t, noise, drop) of the clips at ``positions`` of step ``step``'s global batch.

        A function of (seed, step, position) only: per-clip seeds make the run independent of how the global
        batch is split over processes and micro-batches.
        """
        cfg = self.cfg
        ts, noises, drops = [], [], []
        for p in positions:
            g = torch.Generator().manual_seed(derive_seed(cfg.train.seed, _DRAW, step, p))
            ts.append(torch.randint(0, self.diffusion.num_timesteps, (1,), generator=g))
            noises.append(torch.randn(shape, generator=g))
            drops.append(torch.rand(1, generator=g) < cfg.model.class_dropout_prob)
        return torch.cat(ts), torch.stack(noises), torch.cat(drops)

    # --- state --------------------------------------------------------------------------------------------------
    @property
    def torch_optimizer(self) -> torch.optim.Optimizer:
        return getattr(self.opt, "optimizer", self.opt)  # accelerate's wrapper or the optimiser itself

    def state_dict(self) -> dict:
        """The full training state (whole tensors, optimiser state keyed by parameter name); collective when the
        model is sharded."""
        return {"format": STATE_FORMAT, "step": self.step, "record": self.record,
                "model": full_model_state(self.model), "ema": full_model_state(self.ema.module),
                "opt": full_optimizer_state(self.model, self.torch_optimizer), "data": self.stream.state_dict(),
                "guard": self.guard.state_dict()}

    def load_state_dict(self, s: dict) -> None:
        if s.get("format") != STATE_FORMAT:
            raise ValueError(f"unsupported training-state format {s.get('format')}")
        old = s["record"]
        for key in ("name", "config", "latent_shape", "num_classes"):
            if old[key] != self.record[key]:
                raise ConfigError(f"the run folder holds a run with {key}={old[key]}; this config gives "
                                  f"{self.record[key]}: use another train.run_dir")
        if old["vae"]["fingerprint"] != self.record["vae"]["fingerprint"]:
            raise ConfigError("the run folder was trained on latents of another VAE (fingerprint "
                              f"{old['vae']['fingerprint'][:16]}...): use another train.run_dir")
        load_full_model_state(self.model, s["model"])
        load_full_model_state(self.ema.module, s["ema"])
        load_full_optimizer_state(self.model, self.torch_optimizer, s["opt"])
        self.stream.load_state_dict(s["data"])
        self.guard.load_state_dict(s["guard"])
        self.step = int(s["step"])

    def replica_fingerprints(self) -> list[str]:
        """The weights fingerprint of every process's model (collective); DDP keeps them identical."""
        from accelerate.utils import gather_object

        mine = state_dict_fingerprint(self.model.state_dict())
        return gather_object([mine]) if self.accelerator.num_processes > 1 else [mine]

    def save(self) -> Path:
        acc, t = self.accelerator, self.cfg.train
        if t.check_replicas and acc.num_processes > 1 and not self.sharded:
            prints = self.replica_fingerprints()
            if len(set(prints)) != 1:
                raise RuntimeError(f"step {self.step}: the processes' weights differ ({prints}); the data-parallel "
                                   "run is out of sync and its checkpoint would be ambiguous")
            self.monitor.info(f"step {self.step}: weights identical on all {acc.num_processes} processes "
                              f"({prints[0][:16]}...)")
        state = self.state_dict() if acc.is_main_process or self.sharded else {}  # collective when sharded
        weights = {EMA_FILE: (state["ema"], self.record)} if acc.is_main_process else None
        return self._write_checkpoint(state if acc.is_main_process else {}, weights)

    # --- setup: fresh start or resume ---------------------------------------------------------------------------
    def setup(self) -> None:
        cfg, acc, t = self.cfg, self.accelerator, self.cfg.train
        ckpt = self._run_folder()
        if ckpt is None and cfg.model.init_from:
            state = load_init_state(cfg.model.init_from)
            problems = state_dict_misfit(self.model, state)
            if problems:
                raise ConfigError(f"model.init_from={cfg.model.init_from} does not fit {cfg.model.name} with "
                                  f"{self.record['config']}: {'; '.join(problems)}")
            self.model.load_state_dict(state, strict=True)
        self._wrap()
        rng = self._open_run(ckpt)
        if acc.is_main_process:  # only once the folder is accepted: a refused resume leaves its record alone
            write_run_files(self.run.root, self.record, self.spec.manifest)
        m = self.monitor
        if ckpt is None:
            layout = ("sharded (FSDP2)" if self.sharded else "replicated (DDP)" if acc.num_processes > 1
                      else "one process")
            m.info(f"new run in {self.run.root}: {cfg.model.name}, {self.num_parameters:,} parameters, "
                   f"{acc.num_processes} process(es) on {acc.device}, {layout}, mixed precision {acc.mixed_precision}")
        c, tl, h, w = self.spec.latent_shape
        per_epoch = (f"{len(self.dataset)} videos per epoch, one of their cached variants each"
                     if isinstance(self.dataset, VideoVariants) else f"{len(self.dataset)} clips")
        m.info(f"cache {self.spec.cache_dir}: {per_epoch}, latents ({c}, {tl}, {h}, {w}) of VAE "
               f"'{self.spec.vae['name']}', {self.spec.num_classes or 'no'} classes, normalize={cfg.data.normalize}")
        m.info(f"effective batch {self.effective_batch} = {t.batch_size} per process x {acc.num_processes} "
               f"process(es) x {t.grad_accum} accumulation step(s)")
        # randomness outside the per-clip draws (none in the model today): per process, restored on resume
        if rng is not None:
            restore_rng(rng)
        else:
            seed_everything(derive_seed(t.seed, acc.process_index, 1))

    def _wrap(self) -> None:
        """EMA copy, the data-parallel layout (DDP through accelerate, or FSDP2 shards) and the optimiser."""
        cfg, acc, o = self.cfg, self.accelerator, self.cfg.optim
        self.model.to(self.device)
        self.ema = EMA(self.model, cfg.train.ema_decay)  # float32 copy, made before any wrapping
        adamw = dict(lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)
        if self.sharded:
            shard_latte(self.model, self.device, acc.num_processes)
            shard_latte(self.ema.module, self.device, acc.num_processes)  # the same shards: a local update
            self.ema.ema.foreach = False  # timm's fused lerp cannot mix sharded parameters and plain buffers
            self.model_ddp = self.model  # FSDP2 modules reduce-scatter gradients themselves
            self.opt = torch.optim.AdamW(self.model.parameters(), **adamw)  # over the local shards
        else:
            self.opt = torch.optim.AdamW(self.model.parameters(), **adamw)
            self.model_ddp, self.opt = acc.prepare(self.model, self.opt)
        self.forward = torch.compile(self.model_ddp) if cfg.model.compile else self.model_ddp

    # --- the loop -----------------------------------------------------------------------------------------------
    def _micro_batch(self, step: int, micro: int) -> tuple[torch.Tensor, ...]:
        """This process's latents, labels and draws for micro-batch ``micro`` of step ``step``."""
        acc, t = self.accelerator, self.cfg.train
        batch = self.stream.next()
        x = batch["latent"] if isinstance(batch, dict) else batch
        n = x.shape[0]
        first = (micro * acc.num_processes + acc.process_index) * t.batch_size  # position in the global batch
        tt, noise, drop = self.draws(step, list(range(first, first + n)), tuple(x.shape[1:]))
        y = None
        if self.spec.num_classes > 0:
            y = torch.as_tensor(batch["label"], dtype=torch.long)
            y = torch.where(drop, torch.full_like(y, self.spec.num_classes), y)  # the null label (CFG training)
        dev = self.device
        return x.to(dev), tt.to(dev), noise.to(dev), None if y is None else y.to(dev)

    def train_step(self) -> bool:
        """One optimisation step (taken or skipped); True if taken."""
        cfg, acc, t = self.cfg, self.accelerator, self.cfg.train
        step = self.step + 1
        t0 = time.perf_counter()
        self.model_ddp.train()
        ok = True
        sums = {"loss": 0.0, "mse": 0.0, "vb": 0.0}
        for micro in range(t.grad_accum):
            x, tt, noise, y = self._micro_batch(step, micro)
            if not ok:
                continue  # a bad micro-batch: the step is skipped, the data still moves on
            last = micro == t.grad_accum - 1
            with gradient_sync(self.model, self.model_ddp, acc, enabled=last):
                with acc.autocast():
                    terms = self.diffusion.training_losses(self.forward, x, tt, noise=noise, y=y)
                loss = terms["loss"].mean()
                ok = self.guard.check(step, {"loss": loss}, self._last_good, final=False)
                if ok:
                    acc.backward(loss / t.grad_accum)
                    for k in sums:
                        if k in terms:
                            sums[k] += float(self._mean_over_ranks(terms[k].detach().float().mean())) / t.grad_accum
        gn = None
        if ok:
            clip = clip_active(cfg, step)
            gn = total_norm(acc.clip_grad_norm_(self.model_ddp.parameters(),
                                                cfg.optim.max_grad_norm if clip else math.inf))
            ok = self.guard.check(step, {"grad_norm": gn}, self._last_good)
        if ok:
            self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        if not ok:
            return False
        self.step = step
        self.ema.update(self.model, step)
        values = {k: v for k, v in sums.items() if k == "loss" or v != 0.0} | {"grad_norm": float(gn)}
        self.history.append(values)
        self._after_step(step, values, time.perf_counter() - t0)
        return True

    def _after_step(self, step: int, values: dict[str, float], dt: float) -> None:
        t, m = self.cfg.train, self.monitor
        rate = m.rate(step)
        m.step(step, {"loss": values["loss"], "samples/s": rate * self.effective_batch})
        if step % t.log_every == 0 or step == t.max_steps:
            m.scalars(step, {f"train/{k}": v for k, v in values.items()}
                      | {"train/lr": self.opt.param_groups[0]["lr"], "train/samples_per_s": rate * self.effective_batch,
                         "train/effective_batch": self.effective_batch})
            text = " ".join(f"{k}={v:.5g}" for k, v in values.items())
            m.info(f"step {step}/{t.max_steps} {text} {rate:.3g} it/s {rate * self.effective_batch:.3g} samples/s "
                   f"(batch {self.effective_batch})")
        s = self.cfg.sample
        if s.every and (step % s.every == 0 or step == t.max_steps):
            self.write_samples(step)
        if step % t.checkpoint_every == 0 or step == t.max_steps:
            self.save()

    # --- samples ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def _cache_vae(self) -> nn.Module:
        """The VAE that decodes periodic samples: the cache's own, verified by fingerprint."""
        try:
            return cache_vae(self.spec.manifest)
        except CacheError as err:
            raise CacheError(f"{err}: set vae.ckpt to them, or turn periodic samples off with sample.every=0") from None

    def sample_latents(self, model: nn.Module | None = None, num: int | None = None, seed: int | None = None,
                       sampler: str | None = None,
                       steps: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(latents in diffusion space (n, C, T', H', W'), labels or None) from ``model`` (default: the EMA)."""
        from . import samplers

        s = self.cfg.sample
        model = model if model is not None else self.ema.module
        num, seed = num or s.num, s.seed if seed is None else seed
        shape = (num, *self.spec.latent_shape)
        gens = [torch.Generator().manual_seed(derive_seed(seed, i)) for i in range(num)]
        noise = torch.stack([torch.randn(shape[1:], generator=g) for g in gens]).to(self.device)
        y = None
        if self.spec.num_classes > 0:
            y = torch.tensor([i % self.spec.num_classes for i in range(num)], device=self.device)
        fn = samplers.SAMPLERS[sampler or s.sampler]
        was_training = model.training
        model.eval()
        z = fn(model, shape, self.diffusion, steps=steps or s.steps, noise=noise, generator=gens, y=y,
               cfg_scale=s.cfg_scale if y is not None else 1.0, progress=False)
        model.train(was_training)
        return z, y

    @torch.no_grad()
    def write_samples(self, step: int) -> Path | None:
        """A grid of EMA samples decoded with the cache's VAE, in ``samples/step-NNNNNN.{gif,mp4}``."""
        model = self.ema.module
        if self.sharded:  # gather the EMA (collective), sample with a whole copy on the main process
            state = full_model_state(self.ema.module)
            model = build_from_record(self.record).to(self.device) if self.accelerator.is_main_process else None
            if model is not None:
                model.load_state_dict(state)
        if not self.accelerator.is_main_process:
            return None
        from tokenizer.training.samples import write_panels

        if self.vae is None:
            self.vae = self._cache_vae()
        z, _ = self.sample_latents(model)
        vae = self.vae.to(self.device)
        video = vae.decode(self.normalizer.denormalize(z.float())).clamp(-1, 1)  # (n, 3, T, H, W)
        path = self.run.samples_dir / f"step-{step:06d}.{self.cfg.sample.format}"
        write_panels(path, [[v] for v in video], fps=self.cfg.sample.fps)
        self.monitor.info(f"step {step}: samples {path}")
        return path


def state_dict_misfit(model: nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """Why ``state`` would not load strictly into ``model``: missing and unexpected names, differing shapes."""
    own = model.state_dict()
    out = []
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing:
        out.append(f"missing {missing[:6]}{' ...' if len(missing) > 6 else ''}")
    if unexpected:
        out.append(f"unexpected {unexpected[:6]}{' ...' if len(unexpected) > 6 else ''}")
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in state and state[k].shape != v.shape]
    if shapes:
        out.append(f"shapes differ (checkpoint vs model): {shapes[:4]}{' ...' if len(shapes) > 4 else ''}")
    return out


def train(cfg: LatteTrainConfig, accelerator: Any = None, dataset: Dataset | None = None) -> dict:
    """Build a :class:`LatteTrainer` and run it to ``train.max_steps``."""
    return LatteTrainer(cfg, accelerator=accelerator, dataset=dataset).fit()
