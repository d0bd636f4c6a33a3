"""DCGAN training on normal images, then the encoder (f-AnoGAN izi_f), with checkpoints."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from anogan_inspect.configs import GAN_LOSSES, TrainConfig  # noqa: F401 (re-exported)
from anogan_inspect.networks import (
    Discriminator,
    Encoder,
    FeatureExtractor,
    Generator,
    ModelConfig,
    init_weights,
)
from anogan_inspect.pictures import save_grid
from anogan_inspect.trainer.distributed import Distributed

log = logging.getLogger(__name__)


@dataclass
class Networks:
    """The three networks being trained, with the config that builds them."""

    model: ModelConfig
    generator: Generator
    discriminator: Discriminator
    encoder: Encoder

    @classmethod
    def build(cls, model: ModelConfig, seed: int) -> Networks:
        torch.manual_seed(seed)
        nets = cls(model, Generator(model), Discriminator(model), Encoder(model))
        for net in (nets.generator, nets.discriminator, nets.encoder):
            net.apply(init_weights)
        return nets

    def to(self, device: torch.device) -> Networks:
        for net in (self.generator, self.discriminator, self.encoder):
            net.to(device)
        return self


class Trainer:
    """Trains G and D adversarially, then E with G and D frozen; checkpoints every epoch."""

    def __init__(self, nets: Networks, cfg: TrainConfig, run_dir: Path, device: torch.device,
                 job: Distributed | None = None):
        """job: this process's place in a torchrun job (trainer/distributed.py), or None."""
        self.nets, self.cfg, self.run_dir, self.device = nets.to(device), cfg, run_dir, device
        self.job = job
        self.opt_g = torch.optim.Adam(nets.generator.parameters(), cfg.lr_g, betas=cfg.betas)
        self.opt_d = torch.optim.Adam(nets.discriminator.parameters(), cfg.lr_d, betas=cfg.betas)
        self.opt_e = torch.optim.Adam(nets.encoder.parameters(), cfg.encoder_lr)
        if cfg.gan_loss not in GAN_LOSSES:
            raise ValueError(f"gan_loss must be one of {GAN_LOSSES}, got {cfg.gan_loss!r}")
        if cfg.critic_steps < 1:
            raise ValueError(f"critic_steps must be at least 1, got {cfg.critic_steps}")
        if cfg.gan_loss == "wgan-gp" and nets.model.disc_norm == "batch":
            raise ValueError("wgan-gp needs a discriminator without BatchNorm (the gradient "
                             "penalty is per sample): use --disc-norm layer or none")
        self.gan_epoch = 0
        self.encoder_epoch = 0
        self.critic_updates = 0  # wgan-gp: G steps after every critic_steps of these
        self.seconds_before = 0.0  # training seconds of the runs this one resumed
        self.started: float | None = None  # when this run's training began (run_train)
        self._last_loss_g = 0.0
        self.history: list[dict] = []
        self.fixed_z = torch.randn(64, nets.model.latent_dim,
                                   generator=torch.Generator().manual_seed(cfg.seed)).to(device)
        # Epoch orders come from these; their states (and the global RNG that draws the
        # GAN's z) go into every checkpoint, so a resumed run equals an uninterrupted one.
        self.gan_order = torch.Generator().manual_seed(cfg.seed)
        self.encoder_order = torch.Generator().manual_seed(cfg.seed + 1000)
        # What trains: the networks themselves, or their DistributedDataParallel wrappers
        # (the same parameters); checkpoints and the bundle take the networks themselves.
        self.G, self.D, self.E = nets.generator, nets.discriminator, nets.encoder
        if job is not None:
            if cfg.gan_loss == "wgan-gp":
                raise ValueError("distributed training supports --gan-loss bce only (the "
                                 "gradient penalty's double backward does not go through "
                                 "DistributedDataParallel)")
            if nets.model.disc_norm == "batch":
                raise ValueError("distributed training needs a discriminator without "
                                 "BatchNorm: use --disc-norm layer or none")
            torch.manual_seed(cfg.seed + job.rank)  # each process draws its own z
            self.G, self.D = job.wrap(nets.generator), job.wrap(nets.discriminator)
            self.E = job.wrap(nets.encoder)
        self.writes = job is None or job.main  # checkpoints, samples (rank 0)

    # -- GAN ---------------------------------------------------------------------------------

    def train_gan(self, images: torch.Tensor) -> None:
        """Adversarial training on images (N, C, S, S) in [-1, 1] up to cfg.epochs."""
        while self.gan_epoch < self.cfg.epochs:
            order = self._order(images.shape[0], self.gan_order, self.gan_epoch)
            bar = tqdm(range(0, len(order), self.cfg.batch_size), leave=False,
                       desc=f"GAN epoch {self.gan_epoch + 1}/{self.cfg.epochs}",
                       disable=not self.writes)
            totals = {"loss_d": 0.0, "loss_g": 0.0}
            for start in bar:
                real = images[order[start:start + self.cfg.batch_size]].to(self.device)
                losses = self._gan_step(real)
                for key in totals:
                    totals[key] += losses[key] * real.shape[0]
                bar.set_postfix({k: f"{v:.3f}" for k, v in losses.items()})
            self.gan_epoch += 1
            means = self._mean({k: v / len(order) for k, v in totals.items()})
            self.history.append({"phase": "gan", "epoch": self.gan_epoch, **means})
            if self.writes:
                tqdm.write(f"GAN epoch {self.gan_epoch}/{self.cfg.epochs}: "
                           f"loss_d {means['loss_d']:.4f} loss_g {means['loss_g']:.4f}")
            self._save_samples()
            self.save_checkpoint()
        self.recalibrate_generator_bn()

    def _gan_step(self, real: torch.Tensor) -> dict[str, float]:
        """One discriminator and one generator update (BCE with logits, as in the seed)."""
        if self.cfg.gan_loss == "wgan-gp":
            return self._wgan_gp_step(real)
        G, D = self.G, self.D
        G.train()
        D.train()
        z = torch.randn(real.shape[0], self.nets.model.latent_dim, device=self.device)
        fake = G(z)
        ones = torch.ones(real.shape[0], device=self.device)
        zeros = torch.zeros_like(ones)
        if self.job is None:
            real_logits, fake_logits = D(real), D(fake.detach())
        else:  # one forward a backward, as DistributedDataParallel wants (D has no BN)
            real_logits, fake_logits = D(torch.cat([real, fake.detach()])).split(
                real.shape[0])
        loss_d = (F.binary_cross_entropy_with_logits(real_logits, ones)
                  + F.binary_cross_entropy_with_logits(fake_logits, zeros))
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        self.opt_d.step()
        loss_g = F.binary_cross_entropy_with_logits(D(fake), ones)
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_g.step()
        return {"loss_d": loss_d.item(), "loss_g": loss_g.item()}

    def _wgan_gp_step(self, real: torch.Tensor) -> dict[str, float]:
        """One critic update (Wasserstein loss + gradient penalty on interpolates); one
        generator update every cfg.critic_steps of them."""
        G, D = self.nets.generator, self.nets.discriminator
        G.train()
        D.train()
        z = torch.randn(real.shape[0], self.nets.model.latent_dim, device=self.device)
        fake = G(z).detach()
        loss_d = D(fake).mean() - D(real).mean() + self.cfg.gp_weight * \
            gradient_penalty(D, real, fake)
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        self.opt_d.step()
        self.critic_updates += 1
        if self.critic_updates % self.cfg.critic_steps == 0:
            loss_g = -D(G(z)).mean()
            self.opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            self.opt_g.step()
            self._last_loss_g = loss_g.item()
        return {"loss_d": loss_d.item(), "loss_g": self._last_loss_g}

    @torch.no_grad()
    def recalibrate_generator_bn(self) -> None:
        """Re-estimate G's BatchNorm running statistics as exact averages over many z batches.

        During training they are exponential averages over a moving generator; eval-mode
        search needs statistics of the final one.
        """
        G = self.nets.generator
        if self.cfg.bn_recalibration_batches == 0:
            G.eval()
            return
        norms = [m for m in G.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        for bn in norms:
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average
        G.train()
        gen = torch.Generator().manual_seed(self.cfg.seed + 1)
        for _ in range(self.cfg.bn_recalibration_batches):
            G(torch.randn(self.cfg.batch_size, self.nets.model.latent_dim, generator=gen)
              .to(self.device))
        for bn in norms:
            bn.momentum = 0.1
        G.eval()

    # -- Encoder -----------------------------------------------------------------------------

    def train_encoder(self, images: torch.Tensor) -> None:
        """izi_f: mean|x - G(E(x))|² + κ·mean|f(x) - f(G(E(x)))|², G and D frozen, eval."""
        G, E = self.nets.generator.eval(), self.E
        f = FeatureExtractor(self.nets.discriminator).eval()
        for net in (G, self.nets.discriminator):
            net.requires_grad_(False)
        while self.encoder_epoch < self.cfg.encoder_epochs:
            E.train()
            order = self._order(images.shape[0], self.encoder_order,
                                self.cfg.epochs + self.encoder_epoch)
            bar = tqdm(range(0, len(order), self.cfg.batch_size), leave=False,
                       desc=f"encoder epoch {self.encoder_epoch + 1}/{self.cfg.encoder_epochs}",
                       disable=not self.writes)
            total = 0.0
            for start in bar:
                x = images[order[start:start + self.cfg.batch_size]].to(self.device)
                reconstruction = G(E(x))
                loss = (F.mse_loss(reconstruction, x)
                        + self.cfg.kappa * F.mse_loss(f(reconstruction), f(x)))
                self.opt_e.zero_grad(set_to_none=True)
                loss.backward()
                self.opt_e.step()
                total += loss.item() * x.shape[0]
                bar.set_postfix(loss=f"{loss.item():.4f}")
            self.encoder_epoch += 1
            mean = self._mean({"loss": total / len(order)})["loss"]
            self.history.append({"phase": "encoder", "epoch": self.encoder_epoch, "loss": mean})
            if self.writes:
                tqdm.write(f"encoder epoch {self.encoder_epoch}/{self.cfg.encoder_epochs}: "
                           f"loss {mean:.4f}")
            self._save_encoder_samples(images[:32].to(self.device))
            self.save_checkpoint()
        E.eval()

    def _order(self, n: int, generator: torch.Generator, epoch: int) -> torch.Tensor:
        """An epoch's order of the n images: a shuffle, or this rank's share of one; the
        first cfg.samples_per_epoch of it when that is set."""
        if self.job is None:
            order = torch.randperm(n, generator=generator)
        else:
            order = self.job.order(n, epoch, self.cfg.seed)
        limit = self.cfg.samples_per_epoch
        if limit and limit < n:
            order = order[:max(1, limit // (self.job.world_size if self.job else 1))]
        return order

    def _mean(self, values: dict[str, float]) -> dict[str, float]:
        """An epoch's mean losses, over every process's images."""
        return values if self.job is None else self.job.mean(values)

    # -- Pictures and checkpoints ------------------------------------------------------------

    @torch.no_grad()
    def _save_samples(self) -> None:
        if not self.writes:
            return
        G = self.nets.generator
        G.eval()
        save_grid(G(self.fixed_z), self.run_dir / "samples" / f"gan_epoch_{self.gan_epoch:03d}.png")

    @torch.no_grad()
    def _save_encoder_samples(self, x: torch.Tensor) -> None:
        """Inputs beside G(E(x)), pairwise."""
        if not self.writes:
            return
        self.nets.encoder.eval()
        pairs = torch.stack([x, self.nets.generator(self.nets.encoder(x))], 1).flatten(0, 1)
        save_grid(pairs, self.run_dir / "samples" / f"encoder_epoch_{self.encoder_epoch:03d}.png",
                  nrow=8)

    def save_checkpoint(self) -> None:
        """Weights, optimiser states and progress, written atomically to run_dir (by rank
        0 of a distributed job)."""
        if not self.writes:
            return
        state = {
            "model_config": self.nets.model.to_dict(),
            "train_config": asdict(self.cfg),
            "gan_epoch": self.gan_epoch,
            "encoder_epoch": self.encoder_epoch,
            "critic_updates": self.critic_updates,
            "history": self.history,
            "seconds": self.seconds_before + (time.time() - self.started
                                              if self.started is not None else 0.0),
            "generator": self.nets.generator.state_dict(),
            "discriminator": self.nets.discriminator.state_dict(),
            "encoder": self.nets.encoder.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "opt_e": self.opt_e.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "gan_order": self.gan_order.get_state(),
                    "encoder_order": self.encoder_order.get_state(),
                    "cuda": torch.cuda.get_rng_state_all() if self.device.type == "cuda"
                    else []},
        }
        path = self.run_dir / "checkpoint.pt"
        tmp = path.with_suffix(".pt.tmp")
        torch.save(state, tmp)
        tmp.replace(path)

    def load_checkpoint(self, path: Path) -> None:
        """Resume: weights, optimiser states, epoch counters and random states."""
        state = torch.load(path, map_location=self.device, weights_only=False)
        saved = ModelConfig.from_dict(state["model_config"])
        if saved != self.nets.model:
            raise ValueError(f"{path}: checkpoint is for {saved}, not {self.nets.model}")
        for name in ("generator", "discriminator", "encoder"):
            getattr(self.nets, name).load_state_dict(state[name])
        for name in ("opt_g", "opt_d", "opt_e"):
            getattr(self, name).load_state_dict(state[name])
        self.gan_epoch, self.encoder_epoch = state["gan_epoch"], state["encoder_epoch"]
        self.critic_updates = state.get("critic_updates", 0)
        self.history = state["history"]
        self.seconds_before = float(state.get("seconds", 0.0))
        rng = state.get("rng")
        if rng is None:
            log.warning("%s has no random states (an older checkpoint): the resumed run will "
                        "not equal an uninterrupted one", path)
        else:
            torch.set_rng_state(rng["torch"].cpu())
            self.gan_order.set_state(rng["gan_order"].cpu())
            self.encoder_order.set_state(rng["encoder_order"].cpu())
            if rng["cuda"] and self.device.type == "cuda":
                torch.cuda.set_rng_state_all([s.cpu() for s in rng["cuda"]])
        if self.job is not None:  # rank 0's saved state on every rank: draw apart again
            torch.manual_seed(self.cfg.seed + self.job.rank + 7919 * self.gan_epoch
                              + 104729 * self.encoder_epoch)
        log.info("resumed from %s at GAN epoch %d, encoder epoch %d",
                 path, self.gan_epoch, self.encoder_epoch)


def gradient_penalty(critic: torch.nn.Module, real: torch.Tensor, fake: torch.Tensor
                     ) -> torch.Tensor:
    """mean (‖∇ D(x̂)‖₂ − 1)² at random interpolates x̂ of real and fake images."""
    alpha = torch.rand(real.shape[0], 1, 1, 1, device=real.device)
    mixed = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    grad, = torch.autograd.grad(critic(mixed).sum(), mixed, create_graph=True)
    return ((grad.flatten(1).norm(2, dim=1) - 1) ** 2).mean()
