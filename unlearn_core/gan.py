"""A small DCGAN for 28x28 digits, conditional or unconditional.

Design (kept small so base training takes about a minute on 2 CPU cores):

- Generator: ``z`` (plus a one-hot label when conditional) -> linear ->
  ``2w x 7 x 7`` -> transposed conv to ``w x 14 x 14`` -> transposed conv to
  ``1 x 28 x 28`` with a sigmoid, so samples live in [0, 1] like the
  project's image tensors (no rescaling anywhere). BatchNorm as in DCGAN.
- Discriminator: two stride-2 convs with LeakyReLU(0.2) and a linear logit;
  no BatchNorm, so a sample's score does not depend on its batch (the
  membership attack and the unlearning stop rule score single images). When
  conditional, the label enters as one-hot constant channels.
- Training: Adam (betas 0.5/0.999; lr 2e-3 and batch 32, higher than
  DCGAN's 2e-4 so 25 epochs on 4,000 digits give recognisable digits in about
  a minute), BCE with logits, the non-saturating generator loss, one D step
  and one G step per batch. Conditional generators see the real batch's labels.

``num_classes == 0`` means unconditional. Label conditioning is one-hot, so a
class the conditional GAN does not have cannot be requested (see ``check_labels``).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from tqdm.auto import tqdm

from .errors import InputError
from .training import batches, seed_everything, seeded


class GanParams(BaseModel):
    """The ``gan`` section of params.yaml: architecture, schedule, reference classifier."""

    model_config = ConfigDict(extra="forbid")
    conditional: bool = True
    z_dim: int = Field(32, ge=1)
    width: int = Field(16, ge=1)
    epochs: int = Field(25, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(2e-3, gt=0)
    beta1: float = Field(0.5, ge=0, lt=1)
    seed: int = 0
    reference_model: str = "mnist_cnn"
    reference_epochs: int = Field(2, ge=1)
    reference_lr: float = Field(1e-3, gt=0)


def one_hot(y: torch.Tensor | None, num_classes: int) -> torch.Tensor | None:
    if not num_classes:
        return None
    return F.one_hot(y.long(), num_classes).float()


class Generator(nn.Module):
    def __init__(self, z_dim: int = 32, num_classes: int = 0, width: int = 16):
        super().__init__()
        self.z_dim, self.num_classes, self.width = z_dim, num_classes, width
        self.fc = nn.Sequential(nn.Linear(z_dim + num_classes, 2 * width * 7 * 7, bias=False),
                                nn.BatchNorm1d(2 * width * 7 * 7), nn.ReLU())
        self.net = nn.Sequential(
            nn.ConvTranspose2d(2 * width, width, 4, 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.ConvTranspose2d(width, 1, 4, 2, 1), nn.Sigmoid())

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = z if not self.num_classes else torch.cat([z, one_hot(y, self.num_classes)], 1)
        return self.net(self.fc(h).view(-1, 2 * self.width, 7, 7))


class Discriminator(nn.Module):
    def __init__(self, num_classes: int = 0, width: int = 16, in_channels: int = 1):
        super().__init__()
        self.num_classes = num_classes
        self.net = nn.Sequential(
            nn.Conv2d(in_channels + num_classes, width, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, 4, 2, 1), nn.LeakyReLU(0.2), nn.Flatten())
        self.out = nn.Linear(2 * width * 7 * 7, 1)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Real/fake logit per image, shape [N]."""
        if self.num_classes:
            maps = one_hot(y, self.num_classes)[:, :, None, None].expand(-1, -1, *x.shape[2:])
            x = torch.cat([x, maps], 1)
        return self.out(self.net(x)).squeeze(1)


class GAN(nn.Module):
    """Generator + discriminator and the hyperparameters to rebuild them."""

    def __init__(self, z_dim: int = 32, num_classes: int = 0, width: int = 16):
        super().__init__()
        self.z_dim, self.num_classes, self.width = z_dim, num_classes, width
        self.generator = Generator(z_dim, num_classes, width)
        self.discriminator = Discriminator(num_classes, width)

    @property
    def conditional(self) -> bool:
        return self.num_classes > 0

    @property
    def arch(self) -> dict:
        return {"z_dim": self.z_dim, "num_classes": self.num_classes, "width": self.width}

    def check_labels(self, y: torch.Tensor | None, field: str = "labels") -> None:
        """A conditional GAN needs labels in 0..K-1; an unconditional one ignores them."""
        if not self.conditional:
            return
        if y is None:
            raise InputError(field, "a conditional GAN needs class labels")
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
            raise InputError(field, f"label {int(y.max()) if int(y.max()) >= self.num_classes else int(y.min())} "
                                    f"is not a class of this GAN (0..{self.num_classes - 1})")

    def score(self, x: torch.Tensor, y: torch.Tensor | None = None, batch_size: int = 512) -> torch.Tensor:
        """Discriminator probability of 'real' per image (CPU tensor)."""
        d = self.discriminator
        device = next(d.parameters()).device
        out = []
        with torch.no_grad():
            for i in range(0, len(x), batch_size):
                yb = y[i:i + batch_size].to(device) if self.conditional else None
                out.append(torch.sigmoid(d(x[i:i + batch_size].to(device), yb)).cpu())
        return torch.cat(out) if out else torch.empty(0)


def check_images(x: torch.Tensor, field: str = "images") -> None:
    if x.ndim != 4 or tuple(x.shape[1:]) != (1, 28, 28):
        raise InputError(field, f"expected images of shape [N, 1, 28, 28], got {list(x.shape)}")


def balanced_labels(n: int, num_classes: int) -> torch.Tensor | None:
    """Labels 0..K-1 repeated, so every class gets n/K samples (None if unconditional)."""
    return torch.arange(n) % num_classes if num_classes else None


@torch.no_grad()
def sample(gan: GAN, n: int, seed: int = 0, labels: torch.Tensor | None = None,
           batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``n`` generated images in [0, 1] on CPU and their conditioning labels.

    Latents come from a private generator seeded with ``seed`` (reproducible,
    global RNG untouched). Conditional GANs get balanced labels unless given.
    """
    g = gan.generator.eval()
    device = next(g.parameters()).device
    z = torch.randn(n, gan.z_dim, generator=torch.Generator().manual_seed(seed))
    if gan.conditional and labels is None:
        labels = balanced_labels(n, gan.num_classes)
    gan.check_labels(labels)
    out = []
    for i in range(0, n, batch_size):
        yb = labels[i:i + batch_size].to(device) if gan.conditional else None
        out.append(g(z[i:i + batch_size].to(device), yb).cpu())
    return (torch.cat(out) if out else torch.empty(0, 1, 28, 28)), labels


def build_gan(p: GanParams, num_classes: int) -> GAN:
    """A fresh GAN whose initial weights depend on ``p.seed`` only."""
    with seeded(p.seed):
        return GAN(p.z_dim, num_classes if p.conditional else 0, p.width)


def train_gan(gan: GAN, x: torch.Tensor, y: torch.Tensor | None, epochs: int, batch_size: int = 32,
              lr: float = 2e-3, beta1: float = 0.5, seed: int = 0, progress: bool = False) -> GAN:
    """Standard DCGAN training in place; returns the GAN in eval mode."""
    check_images(x, "train.x")
    gan.check_labels(y, "train.y")
    device = next(gan.parameters()).device
    gen = seed_everything(seed)
    G, D = gan.generator.train(), gan.discriminator.train()
    opt_g = torch.optim.Adam(G.parameters(), lr=lr, betas=(beta1, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), lr=lr, betas=(beta1, 0.999))
    steps = tqdm(range(epochs), desc="train gan", unit="epoch", disable=not progress, leave=False)
    for _ in steps:
        for idx in batches(len(x), batch_size, gen):
            real = x[idx].to(device)
            yb = y[idx].to(device) if gan.conditional else None
            z = torch.randn(len(idx), gan.z_dim, generator=gen).to(device)
            fake = G(z, yb)
            d_real, d_fake = D(real, yb), D(fake.detach(), yb)
            loss_d = (F.binary_cross_entropy_with_logits(d_real, torch.ones_like(d_real))
                      + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake)))
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
            d_gen = D(fake, yb)
            loss_g = F.binary_cross_entropy_with_logits(d_gen, torch.ones_like(d_gen))
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_g.step()
        steps.set_postfix(loss_d=loss_d.item(), loss_g=loss_g.item())
    return gan.eval()


def save_gan(gan: GAN, path: str | Path) -> None:
    """Weights plus the architecture hyperparameters (``arch``) to rebuild them."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save({"family": "gan", "arch": gan.arch, "state_dict": gan.state_dict()}, path)


def load_gan(path: str | Path, device: torch.device | str | None = None) -> GAN:
    blob = torch.load(path, map_location=device or "cpu", weights_only=True)
    if blob.get("family") != "gan":
        raise InputError("model", f"{path} is not a GAN checkpoint")
    gan = GAN(**blob["arch"])
    gan.load_state_dict(blob["state_dict"])
    return gan.to(device or "cpu").eval()
