"""VQ-VAE and its PixelCNN prior: causality by autograd, normalisation by enumeration, the quantizer and
its EMA update against hand computations, and training/saving on a digits-shaped batch."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

import gm.models  # noqa: F401  (fills the registry)
from gm.core.config import ConfigError, build
from gm.data.dataspec import DataSpec
from gm.models.base import Batch, load_model, save_model
from gm.models.vqvae import (
    VQVAE,
    VQVAEConfig,
    codebook_loss,
    commitment_loss,
    ema_codebook_update,
    nearest_codes,
    perplexity,
    straight_through,
)
from gm.nn.pixelcnn import MaskedConv2d, PixelCNN, causal_mask
from tests.helpers import DIGITS, TOY, seeded



def vqvae(data: DataSpec = DIGITS, **overrides) -> VQVAE:
    base = {"hidden": 16, "depth": 1, "code_dim": 4, "codebook_size": 16, "prior_hidden": 16, "prior_blocks": 1}
    torch.manual_seed(0)
    return VQVAE(build(VQVAEConfig, {**base, **overrides}, "test"), data)


def assert_trained_model_scores_and_samples(model, batch: Batch) -> torch.Tensor:
    """A trained VQ model on digits (eval mode): a finite bound, a log mass (<= 0 in data space) under its
    discrete head, and samples in model space; returns the 8 images it scored."""
    model.eval()
    x = batch.x[:8]
    lp = model.log_prob(x)
    assert lp.shape == (8,) and torch.isfinite(lp).all()
    assert (lp + DIGITS.log_det_to_model <= 1e-4).all()  # a discrete head: log P(x) <= 0 in data space
    s = model.sample(5, generator=seeded(0))
    assert s.shape == (5, 1, 8, 8) and s.min() >= -1 and s.max() < 1
    return x


def digits_batch(b: int = 32, seed: int = 0) -> Batch:
    """Digit-like images: a noisy bright stroke of random slope on a dark background, 17 levels."""
    g = seeded(seed)
    rows = torch.arange(8).view(1, 8, 1).float()
    cols = torch.arange(8).view(1, 1, 8).float()
    slope = torch.rand(b, 1, 1, generator=g) * 2 - 1
    offset = torch.rand(b, 1, 1, generator=g) * 4 + 2
    stroke = (cols - (offset + slope * (rows - 3.5))).abs() < 1.2  # (B, 8, 8)
    raw = torch.where(stroke, torch.randint(12, 17, (b, 8, 8), generator=g),
                      torch.randint(0, 3, (b, 8, 8), generator=g)).unsqueeze(1)  # (B, 1, 8, 8)
    y = torch.randint(0, 10, (b,), generator=g)
    return Batch(x=DIGITS.to_model(raw, generator=g), y=y)


def raster_index(h: int, w: int) -> torch.Tensor:
    return torch.arange(h * w).view(h, w)


# --------------------------------------------------------------------------- masked convolutions


def test_masks_by_hand():
    a = causal_mask(3, "A")
    b = causal_mask(3, "B")
    assert a.tolist() == [[1, 1, 1], [1, 0, 0], [0, 0, 0]]
    assert b.tolist() == [[1, 1, 1], [1, 1, 0], [0, 0, 0]]
    with pytest.raises(ValueError, match="odd"):
        causal_mask(4, "A")


@pytest.mark.parametrize("mask_type", ["A", "B"])
def test_masked_conv_sees_only_the_past(mask_type):
    torch.manual_seed(0)
    conv = MaskedConv2d(3, 5, 5, mask_type)
    x = torch.randn(1, 3, 6, 6, requires_grad=True)
    order = raster_index(6, 6)
    for r, c in [(0, 0), (2, 3), (5, 5)]:
        (grad,) = torch.autograd.grad(conv(x)[0, :, r, c].sum(), x)
        touched = grad[0].abs().sum(0) > 0  # (H, W)
        i = order[r, c]
        future = order > i
        assert not touched[future].any()
        assert bool(touched[r, c]) == (mask_type == "B")  # A excludes the centre, B includes it
        if i > 0:
            assert touched[order < i].any()


def test_pixelcnn_logits_depend_only_on_earlier_positions():
    # The whole stack (mask A first, then mask-B blocks): ∂logits_i / ∂input_j = 0 for every j >= i.
    torch.manual_seed(0)
    net = PixelCNN(n_symbols=4, channels=8, n_blocks=2, kernel_size=3)
    h, w = 4, 5
    x = torch.rand(1, 4, h, w, requires_grad=True)  # a soft (one-hot-like) input, so gradients exist
    logits = net(x)
    order = raster_index(h, w)
    for r in range(h):
        for c in range(w):
            (grad,) = torch.autograd.grad(logits[0, :, r, c].sum(), x, retain_graph=True)
            touched = grad[0].abs().sum(0) > 0  # (H, W)
            i = order[r, c]
            assert not touched[order >= i].any(), f"position {(r, c)} sees its own or later inputs"
            # The left and upper neighbours are always in view (further up-right may be PixelCNN's blind spot).
            if c > 0:
                assert touched[r, c - 1], f"position {(r, c)} ignores its left neighbour"
            if r > 0:
                assert touched[r - 1, c], f"position {(r, c)} ignores the position above"


def test_pixelcnn_is_a_normalised_distribution_over_grids():
    torch.manual_seed(0)
    net = PixelCNN(n_symbols=3, channels=8, n_blocks=1, kernel_size=3)
    grids = torch.tensor(list(itertools.product(range(3), repeat=4))).view(-1, 2, 2)  # all 81 grids
    with torch.no_grad():
        # Per position: a softmax over the K symbols.
        probs = F.softmax(net(grids), dim=1)
        torch.testing.assert_close(probs.sum(1), torch.ones(81, 2, 2))
        # Over the whole grid: the product of conditionals sums to 1 only if the model is causal.
        total = net.log_prob(grids).double().exp().sum().item()
    assert total == pytest.approx(1.0, abs=1e-5)


def test_pixelcnn_sampling_is_seeded_and_follows_the_model():
    torch.manual_seed(0)
    net = PixelCNN(n_symbols=2, channels=8, n_blocks=1, kernel_size=3)
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(2.0)  # grid probabilities .55/.15/.25/.05: far from uniform, so a wrong sampler shows
    a = net.sample(6, 3, 3, generator=seeded(1))
    b = net.sample(6, 3, 3, generator=seeded(1))
    assert a.shape == (6, 3, 3) and a.dtype == torch.long
    assert torch.equal(a, b)
    assert not torch.equal(a, net.sample(6, 3, 3, generator=seeded(2)))
    assert torch.isfinite(net.log_prob(a)).all()
    # On a 1×2 grid, sample frequencies match the model's probabilities of the four grids.
    draws = net.sample(4000, 1, 2, generator=seeded(3)).view(-1, 2)
    freq = torch.bincount(draws[:, 0] * 2 + draws[:, 1], minlength=4).double() / 4000
    grids = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1]]).view(4, 1, 2)
    with torch.no_grad():
        p = net.log_prob(grids).double().exp()
    se = (p * (1 - p) / 4000).sqrt()
    assert ((freq - p).abs() < 5 * se + 1e-3).all(), (freq, p)


def test_pixelcnn_class_conditioning():
    torch.manual_seed(0)
    net = PixelCNN(n_symbols=3, channels=8, n_blocks=1, kernel_size=3, n_classes=4)
    codes = torch.zeros(2, 2, 2, dtype=torch.long)
    with torch.no_grad():
        lp0 = net.log_prob(codes, torch.tensor([0, 0]))
        lp1 = net.log_prob(codes, torch.tensor([1, 1]))
    assert not torch.allclose(lp0, lp1)
    assert net.sample(3, 2, 2, generator=seeded(0), labels=torch.tensor([0, 1, 2])).shape == (3, 2, 2)
    with pytest.raises(ValueError, match="class-conditional"):
        net(codes)
    with pytest.raises(ValueError, match="unconditional"):
        PixelCNN(3, 8, 1, 3)(codes, torch.tensor([0, 0]))


# --------------------------------------------------------------------------- the quantizer


def test_nearest_codes_by_brute_force():
    g = seeded(0)
    z, codebook = torch.randn(200, 5, generator=g), torch.randn(17, 5, generator=g)
    brute = torch.tensor([min(range(17), key=lambda k: (z[i] - codebook[k]).pow(2).sum().item())
                          for i in range(200)])
    assert torch.equal(nearest_codes(z, codebook), brute)


def test_straight_through_passes_gradients_to_the_encoder():
    z_e = torch.randn(3, 4, requires_grad=True)
    z_q = torch.randn(3, 4)
    out = straight_through(z_e, z_q)
    assert torch.equal(out, z_e + (z_q - z_e))  # the value is z_q's (up to rounding)
    torch.testing.assert_close(out, z_q)
    weights = torch.randn(3, 4)
    (grad,) = torch.autograd.grad((out * weights).sum(), z_e)
    assert torch.equal(grad, weights)  # the identity Jacobian


def test_model_reconstruction_gradient_reaches_the_encoder_through_the_quantizer():
    model = vqvae(beta=0.0)  # no commitment: the encoder's only gradient is the straight-through one
    out = model.loss(digits_batch(), "vqvae")
    out.loss.backward()
    grads = [p.grad for p in model.encoder.parameters()]
    assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0


def test_commitment_and_codebook_losses_by_hand():
    z_e = torch.tensor([[1.0, 1.0], [3.0, 4.0]], requires_grad=True)  # two latents, D = 2
    codebook = torch.tensor([[0.0, 0.0], [3.0, 3.0]], requires_grad=True)
    codes = nearest_codes(z_e, codebook)
    assert codes.tolist() == [0, 1]  # ‖(1,1)‖² = 2 < 8; ‖(3,4) - (3,3)‖² = 1 < 25
    z_q = codebook[codes]
    commit = commitment_loss(z_e, z_q, beta=0.25)
    assert commit.item() == pytest.approx(0.25 * (2.0 + 1.0) / 2)  # β · mean over latents of ‖z_e - e‖²
    commit.backward()
    assert codebook.grad is None  # sg[e]: the commitment term never moves the codebook
    torch.testing.assert_close(z_e.grad, 0.25 * 2 * (z_e - z_q).detach() / 2)
    z_e.grad = None
    cb = codebook_loss(z_e, z_q)
    assert cb.item() == pytest.approx(1.5)
    cb.backward()
    assert z_e.grad is None  # sg[z_e]: the codebook term never moves the encoder
    torch.testing.assert_close(codebook.grad, torch.tensor([[-1.0, -1.0], [0.0, -1.0]]))


def test_model_logs_the_commitment_term():
    model = vqvae(beta=0.7)
    batch = digits_batch()
    out = model.loss(batch, "vqvae")
    with torch.no_grad():
        z_e = model.encode(batch.x)  # (B, D, h, w)
        flat = z_e.permute(0, 2, 3, 1)  # (B, h, w, D)
        codes = ((flat.unsqueeze(-2) - model.codebook) ** 2).sum(-1).argmin(-1)  # nearest by brute force
        z_q = model.codebook[codes].permute(0, 3, 1, 2)  # (B, D, h, w)
        expected = 0.7 * (z_e - z_q).pow(2).sum(1).mean().item()
        # The straight-through forward value is z_q: -log N(x; G(z_q), s²) with the Gaussian head's s.
        mean = model.decode(z_q).double()  # (B, 64)
    s = model.obs.log_std.detach().double().exp()
    recon = (0.5 * ((batch.x.flatten(1).double() - mean) / s) ** 2 + s.log()
             + 0.5 * math.log(2 * math.pi)).sum(1).mean().item()
    assert out.logs["commitment"] == pytest.approx(expected, rel=1e-5)
    assert out.logs["recon"] == pytest.approx(recon, rel=1e-5)
    assert out.loss.item() == pytest.approx(recon + expected, rel=1e-5)


def test_ema_update_by_hand():
    # K = 2 codes in D = 1 at 0 and 2 (pseudo-counts 1); a batch 0.4, 0.8 -> code 0 and 3.0 -> code 1.
    count, total = torch.tensor([1.0, 1.0]), torch.tensor([[0.0], [2.0]])
    z = torch.tensor([[0.4], [0.8], [3.0]])
    codes = nearest_codes(z, total / count.unsqueeze(1))
    assert codes.tolist() == [0, 0, 1]
    onehot = F.one_hot(codes, 2).float()
    n, sums = onehot.sum(0), onehot.T @ z  # [2, 1], [[1.2], [3.0]]
    new_count, new_total, codebook = ema_codebook_update(count, total, n, sums, decay=0.9, eps=0.1)
    # N = 0.9·[1, 1] + 0.1·[2, 1] = [1.1, 1.0];  m = 0.9·[0, 2] + 0.1·[1.2, 3.0] = [0.12, 2.1]
    torch.testing.assert_close(new_count, torch.tensor([1.1, 1.0]))
    torch.testing.assert_close(new_total, torch.tensor([[0.12], [2.1]]))
    # Laplace: Ñ = (N + ε) / (ΣN + Kε) · ΣN = [1.2, 1.1] / 2.3 · 2.1
    smoothed = torch.tensor([1.2 * 2.1 / 2.3, 1.1 * 2.1 / 2.3])
    torch.testing.assert_close(codebook, torch.tensor([[0.12], [2.1]]) / smoothed.unsqueeze(1))


def test_model_ema_step_matches_the_closed_form():
    model = vqvae()
    batch = digits_batch()
    model.loss(batch, "vqvae")  # the first call sets the codebook from the data
    before = (model.ema_count.clone(), model.ema_sum.clone())
    model.loss(batch, "vqvae")
    with torch.no_grad():
        z_e = model.encode(batch.x).permute(0, 2, 3, 1).reshape(-1, 4)
        onehot = F.one_hot(nearest_codes(z_e, model.codebook), 16).float()
    model.after_step("vqvae")
    count, total, codebook = ema_codebook_update(*before, onehot.sum(0), onehot.T @ z_e, 0.99, 1e-5)
    torch.testing.assert_close(model.ema_count, count)
    torch.testing.assert_close(model.ema_sum, total)
    torch.testing.assert_close(model.codebook, codebook)
    assert int(model.steps) == 1


def test_perplexity_limits():
    assert perplexity(torch.arange(8).repeat(5), 8).item() == pytest.approx(8.0)
    assert perplexity(torch.full((40,), 3), 8).item() == pytest.approx(1.0)
    assert perplexity(torch.tensor([0, 0, 1, 1]), 8).item() == pytest.approx(2.0)
    model = vqvae()
    value = model.codebook_perplexity(digits_batch().x)
    assert 1.0 <= value <= 16.0


# --------------------------------------------------------------------------- the model


def test_configs_are_checked():
    with pytest.raises(ConfigError, match="arch"):
        vqvae(TOY, arch="conv")
    with pytest.raises(ConfigError, match="downsample"):
        vqvae(downsample=4)  # 8 is not divisible by 16
    with pytest.raises(ConfigError, match="prior_kernel"):
        build(VQVAEConfig, {"prior_kernel": 4}, "x")
    with pytest.raises(ConfigError, match="beta"):
        build(VQVAEConfig, {"beta": -1.0}, "x")
    with pytest.raises(ConfigError, match="codebook"):
        build(VQVAEConfig, {"codebook": "kmeans"}, "x")
    with pytest.raises(ConfigError, match="conditional"):
        vqvae(TOY, conditional=True)
    assert (VQVAEConfig().beta, VQVAEConfig().ema_decay) == (0.25, 0.99)


def test_shapes_on_digits_and_toys():
    for data, grid in [(DIGITS, (4, 4)), (TOY, (1, 2))]:
        model = vqvae(data)
        assert model.grid == grid
        x = digits_batch(6).x if data is DIGITS else torch.randn(6, 2)
        assert model.encode(x).shape == (6, 4, *grid)
        assert model.codes(x).shape == (6, *grid)
        assert model.reconstruct(x).shape == x.shape
        assert model.log_prob(x).shape == (6,)
        assert model.sample(3, generator=seeded(0)).shape == (3, *data.shape)
    assert vqvae(downsample=2).grid == (2, 2)


@pytest.mark.parametrize("codebook,decoder", [("ema", "logistic"), ("loss", "categorical")])
def test_trains_on_digits(codebook, decoder):
    model = vqvae(codebook=codebook, decoder=decoder, hidden=32, lr=3e-3, prior_lr=3e-3)
    groups = model.step_groups()
    assert [g.name for g in groups] == ["vqvae", "prior"]
    opts = [g.make_optimizer() for g in groups]
    batch = digits_batch(64)
    first: dict[str, float] = {}
    logs: dict[str, dict] = {}
    for _ in range(40):
        for group, opt in zip(groups, opts):
            out = model.loss(batch, group.name)
            first.setdefault(group.name, out.loss.item())
            logs[group.name] = out.logs
            opt.zero_grad()
            out.loss.backward()
            opt.step()
            model.after_step(group.name)
    last = {g.name: model.loss(batch, g.name).loss.item() for g in groups}
    assert last["vqvae"] < first["vqvae"] - 20, (first, last)  # nats per image
    assert last["prior"] < first["prior"], (first, last)
    assert logs["vqvae"]["perplexity"] > (4.0 if codebook == "ema" else 1.5), logs["vqvae"]  # codebook use
    x = assert_trained_model_scores_and_samples(model, batch)
    assert model.reconstruct(x).shape == x.shape


def test_log_prob_is_recon_plus_prior_of_the_codes():
    model = vqvae(decoder="categorical").eval()
    x = digits_batch(5).x
    # By hand: the nearest codes by brute force, log P(v) of the categorical head at each pixel's level
    # v = ⌊(x + 1)·L/2⌋ plus D·log(L/2) (model-space density), and the prior's chain rule over the codes.
    with torch.no_grad():
        flat = model.encode(x).permute(0, 2, 3, 1)  # (B, h, w, D)
        codes = ((flat.unsqueeze(-2) - model.codebook) ** 2).sum(-1).argmin(-1)  # (B, h, w)
        logits = model.decode(model.codebook[codes].permute(0, 3, 1, 2)).view(5, 64, 17)  # (B, D, L)
        prior_logits = model.prior(codes)  # (B, K, h, w): p(code_i | codes before i)
    v = torch.floor((x.flatten(1) + 1) * 17 / 2).long()  # (B, 64)
    log_px = torch.log_softmax(logits.double(), -1).gather(-1, v.unsqueeze(-1)).sum((1, 2)) + 64 * math.log(8.5)
    log_prior = torch.log_softmax(prior_logits.double(), 1).gather(1, codes.unsqueeze(1)).sum((1, 2, 3))
    torch.testing.assert_close(model.log_prob(x).double(), log_px + log_prior, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(model.log_prob(x), model.log_prob(x))  # deterministic


def test_prior_waits_for_prior_start():
    model = vqvae(prior_start=2)
    batch = digits_batch()
    out = model.loss(batch, "prior")
    out.loss.backward()
    assert out.loss.item() == 0.0 and out.logs["prior_active"] == 0.0
    assert all(p.grad is None or not p.grad.any() for p in model.prior.parameters())
    for _ in range(2):
        model.loss(batch, "vqvae")
        model.after_step("vqvae")
    model.after_step("prior")  # prior steps do not count
    assert int(model.steps) == 2
    out = model.loss(batch, "prior")
    assert out.logs["prior_active"] == 1.0 and out.loss.item() > 0


def test_conditional_prior_marginalises_without_labels():
    model = vqvae(conditional=True).eval()
    x = digits_batch(4).x
    codes = model.codes(x)
    per_class = torch.stack([model.prior.log_prob(codes, torch.full((4,), y)) for y in range(10)])
    torch.testing.assert_close(model.prior_log_prob(codes), torch.logsumexp(per_class, 0) - math.log(10))
    labels = torch.tensor([1, 2, 3, 4])
    assert model.sample(4, generator=seeded(0), condition=labels).shape == (4, 1, 8, 8)
    with pytest.raises(ValueError, match="conditional"):
        model.sample(4)
    assert torch.isfinite(model.loss(digits_batch(), "prior").loss)


def test_save_load_keeps_codebook_and_step_count(tmp_path):
    model = vqvae(prior_start=5)
    batch = digits_batch()
    opt = model.step_groups()[0].make_optimizer()
    for _ in range(3):
        out = model.loss(batch, "vqvae")
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        model.after_step("vqvae")
    loaded = load_model(save_model(model, tmp_path / "m"))
    assert int(loaded.steps) == 3 and bool(loaded.codebook_ready)
    for name in ("codebook", "ema_count", "ema_sum"):
        assert torch.equal(getattr(loaded, name), getattr(model, name)), name
    # The loaded model continues the schedule: two more steps start the prior.
    loaded.train()
    for _ in range(2):
        loaded.loss(batch, "vqvae")
        loaded.after_step("vqvae")
    assert loaded.loss(batch, "prior").logs["prior_active"] == 1.0
