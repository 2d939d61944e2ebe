"""AAE, WAE and AVB: the MMD estimator and the density-ratio trick against closed forms, the
two-player step groups, the class-conditional AAE prior, and short training runs."""

from __future__ import annotations

import math

import pytest
import torch

import gm.models  # noqa: F401  (fills the registry)
from gm.core.config import ConfigError, build
from gm.data.dataspec import DataSpec
from gm.models.aae import AAEConfig, class_prior_means
from gm.models.avb import AVBConfig, density_ratio_loss
from gm.models.base import Batch
from gm.models.wae import IMQ_SCALES, WAEConfig, imq_kernel, mmd_unbiased
from gm.nn.mlp import clamp_to_model_space, mlp
from gm.core.registry import FAMILIES
from tests.helpers import TOY, seeded, train_steps

LABELLED = DataSpec(shape=(2,), kind="toy", num_classes=3)
SMALL = {"hidden": 32, "depth": 2, "z_dim": 2, "disc_hidden": 32, "disc_depth": 2}


def small(family: str, data: DataSpec = TOY, **overrides):
    cls = FAMILIES[family]
    torch.manual_seed(0)
    return cls(build(cls.config_cls, {**SMALL, **overrides}, f"test.{family}"), data)


def toy_batch(b: int = 64, seed: int = 0, labelled: bool = False) -> Batch:
    """Three well-separated 2-D clusters; with labels, the cluster index."""
    g = seeded(seed)
    y = torch.randint(0, 3, (b,), generator=g)
    centres = torch.tensor([[3.0, 0.0], [-1.5, 2.5], [-1.5, -2.5]])
    x = centres[y] + 0.3 * torch.randn(b, 2, generator=g)
    return Batch(x=x, y=y if labelled else None)


def run(model, steps: int, labelled: bool = False) -> list[dict]:
    """The training loop's schedule, a fresh batch per optimizer step; returns each iteration's merged logs."""
    seeds = iter(range(1, 1 << 30))
    return train_steps(model, lambda: toy_batch(seed=next(seeds), labelled=labelled), steps)


# --------------------------------------------------------------------------- MMD


def test_imq_kernel_closed_form():
    a = torch.tensor([[0.0, 0.0]], dtype=torch.float64)
    b = torch.tensor([[1.0, 2.0], [0.0, 0.0]], dtype=torch.float64)
    k = imq_kernel(a, b)  # (1, 2)
    base = 2 * 2 * 1.0  # C = 2·d_z·σ²_z
    expect = sum(base * s / (base * s + 5.0) for s in IMQ_SCALES)  # ‖a - b_0‖² = 5
    assert k.shape == (1, 2)
    assert k[0, 0].item() == pytest.approx(expect, rel=1e-12)
    assert k[0, 1].item() == pytest.approx(len(IMQ_SCALES), rel=1e-12)  # k(z, z) = Σ_s 1
    # One scale, prior variance 2 in 3-D: C = 12, ‖(1, 1, 1)‖² = 3 -> 12 / 15.
    one = imq_kernel(torch.zeros(1, 3), torch.ones(1, 3), scales=(1.0,), prior_var=2.0)
    assert one.item() == pytest.approx(0.8, rel=1e-6)


def test_mmd_u_statistic_equals_brute_force():
    g = seeded(0)
    x = torch.randn(4, 2, generator=g, dtype=torch.float64)
    y = 1.5 + torch.randn(5, 2, generator=g, dtype=torch.float64)

    def k(u, v):
        d2 = float(((u - v) ** 2).sum())
        return sum(4 * s / (4 * s + d2) for s in IMQ_SCALES)

    n, m = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    assert mmd_unbiased(x, y).item() == pytest.approx(xx + yy - 2 * xy, rel=1e-12)
    assert mmd_unbiased(x, y).item() == pytest.approx(mmd_unbiased(y, x).item(), rel=1e-12)
    with pytest.raises(ValueError):
        mmd_unbiased(x[:1], y)


def test_mmd_u_statistic_is_unbiased_and_detects_a_shift():
    reps, n = 4000, 8
    g = seeded(1)
    x = torch.randn(reps, n, 2, generator=g, dtype=torch.float64)  # (R, n, Z)
    y = torch.randn(reps, n, 2, generator=g, dtype=torch.float64)
    same = mmd_unbiased(x, y)  # (R,)
    se = same.std() / math.sqrt(reps)
    assert same.shape == (reps,)
    assert abs(same.mean().item()) < 4 * se.item(), (same.mean(), se)
    assert (same < 0).any(), "an unbiased estimate of 0 must go negative sometimes"
    # The V-statistic (diagonals kept) is biased upwards: the test can tell the two apart.
    v_stat = (imq_kernel(x, x).mean((-1, -2)) + imq_kernel(y, y).mean((-1, -2))
              - 2 * imq_kernel(x, y).mean((-1, -2)))
    assert v_stat.mean() > 10 * se
    shifted = mmd_unbiased(x, y + 1.0)
    se_shift = shifted.std() / math.sqrt(reps)
    assert shifted.mean() > 10 * se_shift and shifted.mean() > 10 * same.mean().abs()


# --------------------------------------------------------------------------- density ratio


def test_density_ratio_trick_recovers_the_log_ratio():
    # q = N(1, 1) against p = N(0, 1): T*(z) = log q(z) - log p(z) = z - 1/2.
    torch.manual_seed(0)
    t = mlp(1, 1, 32, 1, "tanh")
    opt = torch.optim.Adam(t.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=100, gamma=0.3)
    g = seeded(2)
    for _ in range(300):
        zq = 1.0 + torch.randn(512, 1, generator=g)
        zp = torch.randn(512, 1, generator=g)
        loss = density_ratio_loss(t(zq), t(zp))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    points = torch.tensor([[-1.0], [0.0], [0.5], [1.0], [2.0]])
    with torch.no_grad():
        est = t(points).squeeze(1)
    torch.testing.assert_close(est, points.squeeze(1) - 0.5, atol=0.1, rtol=0)  # T* spans [-1.5, 1.5] here


def test_avb_discriminator_step_is_the_density_ratio_loss():
    model = small("avb")
    x = toy_batch(16).x
    torch.manual_seed(3)
    out = model.loss(Batch(x), "disc")
    torch.manual_seed(3)  # the same noise: ε for the encoder, then z ~ p(z)
    with torch.no_grad():
        z_q = model.encoder_samples(x)
    z_p = torch.randn(z_q.shape)
    expect = density_ratio_loss(model.ratio(x, z_q), model.ratio(x, z_p))
    assert out.loss.item() == pytest.approx(expect.item(), rel=1e-6)


# --------------------------------------------------------------------------- step groups


@pytest.mark.parametrize("family,overrides", [("aae", {}), ("aae", {"encoder": "gaussian"}),
                                              ("wae", {"penalty": "gan"}), ("avb", {})])
def test_adversary_and_autoencoder_steps_touch_only_their_own_networks(family, overrides):
    model = small(family, **overrides)
    groups = {g.name: {id(p) for p in g.params} for g in model.step_groups()}
    disc = {id(p) for p in model.disc.parameters()}
    enc = {id(p) for p in model.encoder.parameters()}
    dec = {id(p) for p in model.decoder.parameters()}
    assert groups["disc"] == disc
    assert not (groups["ae"] & disc) and enc | dec <= groups["ae"]
    if family == "aae":
        assert groups["gen"] == enc
    named = dict(model.named_parameters())
    for group in model.step_groups():
        before = {n: p.detach().clone() for n, p in named.items()}
        opt = group.make_optimizer()
        out = model.loss(toy_batch(), group.name)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        changed = {id(named[n]) for n in named if not torch.equal(named[n], before[n])}
        if group.name == "disc":
            assert changed and changed <= disc, "the adversary's step moved the encoder or decoder"
        else:
            assert changed and not (changed & disc), f"the {group.name!r} step moved the adversary"


def test_wae_mmd_has_one_group_and_no_adversary():
    model = small("wae")
    assert [g.name for g in model.step_groups()] == ["ae"]
    assert model.disc is None
    gan = small("wae", penalty="gan", n_disc=3)
    assert [(g.name, g.repeats, g.lr) for g in gan.step_groups()] == [("disc", 3, 5e-4), ("ae", 1, 1e-3)]
    aae = small("aae", n_disc=2)
    assert [(g.name, g.repeats) for g in aae.step_groups()] == [("ae", 1), ("disc", 2), ("gen", 1)]


# --------------------------------------------------------------------------- configs


def test_paper_defaults_and_bad_configs():
    wae = build(WAEConfig, {}, "x")
    assert (wae.penalty, wae.penalty_weight, wae.lr, wae.lr_disc, wae.z_dim) == ("mmd", 10.0, 1e-3, 5e-4, 8)
    assert build(WAEConfig, {"penalty": "gan"}, "x").penalty_weight == 1.0
    assert build(WAEConfig, {"penalty": "gan", "lam": 3.0}, "x").penalty_weight == 3.0
    assert build(WAEConfig, {}, "x").mmd_scales == IMQ_SCALES
    assert build(AVBConfig, {}, "x").ac_samples == 8
    assert build(AAEConfig, {}, "x").encoder == "deterministic"
    for cls, bad in [(WAEConfig, {"lam": 0.0}), (WAEConfig, {"penalty": "wgan"}), (WAEConfig, {"mmd_scales": [1, -1]}),
                     (AVBConfig, {"ac_samples": 1}), (AVBConfig, {"noise_dim": 0}),
                     (AAEConfig, {"encoder": "flow"}), (AAEConfig, {"prior_std": 0.0})]:
        with pytest.raises(ConfigError, match=next(iter(bad))):
            build(cls, bad, "x")


def imq_by_hand(a: torch.Tensor, b: torch.Tensor) -> float:
    """Σ_s C_s / (C_s + ‖a - b‖²), C_s = 2·d_z·σ²_z·s with σ²_z = 1 (Tolstikhin et al.'s scales)."""
    d2 = float(((a.double() - b.double()) ** 2).sum())
    base = 2.0 * a.shape[0] * 1.0
    return sum(base * s / (base * s + d2) for s in (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0))


def mmd_u_statistic_by_hand(p: torch.Tensor, q: torch.Tensor) -> float:
    """Gretton et al. 2012, Eq. 3, term by term: the i = j pairs left out of both within-sample sums."""
    n, m = len(p), len(q)
    within_p = sum(imq_by_hand(p[i], p[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    within_q = sum(imq_by_hand(q[i], q[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    across = sum(imq_by_hand(p[i], q[j]) for i in range(n) for j in range(m)) / (n * m)
    return within_p + within_q - 2 * across


@pytest.mark.parametrize("penalty,lam,expected_lam", [("mmd", None, 10.0), ("mmd", 2.5, 2.5),
                                                      ("gan", None, 1.0), ("gan", 3.0, 3.0)])
def test_wae_loss_is_recon_plus_lambda_penalty(penalty, lam, expected_lam):
    # Eq. 4 on a fixed batch, by hand: ‖x - G(E(x))‖² plus λ times the brute-force MMD U-statistic
    # against the prior draws the loss made (WAE-MMD), or -E log σ(D(E(x))) (WAE-GAN).
    model = small("wae", penalty=penalty, **({} if lam is None else {"lam": lam}))
    b = 12
    x = toy_batch(b).x  # (12, 2)
    torch.manual_seed(3)
    out = model.loss(Batch(x), "ae")
    torch.manual_seed(3)
    prior = torch.randn(b, 2)  # the prior sample z ~ N(0, I) of the MMD, if the loss drew one
    with torch.no_grad():
        codes = model.encoder(x)  # ẑ = E(x), (B, Z)
        x_hat = model.decoder(codes)  # G(ẑ): the Gaussian head's mean is the decoder's output
        logits = model.disc(codes).double() if penalty == "gan" else None
    recon = ((x.double() - x_hat.double()) ** 2).sum(1).mean().item()
    if penalty == "mmd":
        value = mmd_u_statistic_by_hand(prior, codes)
        assert abs(value) > 1e-2  # far from zero: the encoder's codes are not N(0, I) yet
        assert out.logs["mmd"] == pytest.approx(value, rel=1e-4, abs=1e-6)
    else:
        value = -torch.log(torch.sigmoid(logits)).mean().item()  # the non-saturating -E log D(ẑ)
        assert out.logs["gan_penalty"] == pytest.approx(value, rel=1e-5)
    assert out.logs["recon"] == pytest.approx(recon, rel=1e-5)  # c(x, y) = ‖x - y‖²
    assert out.loss.item() == pytest.approx(recon + expected_lam * value, rel=1e-5)
    if penalty == "gan":
        # The adversary's step: -E log D(z) - E log(1 - D(ẑ)), z ~ N(0, I) drawn by the loss.
        torch.manual_seed(4)
        disc = model.loss(Batch(x), "disc")
        torch.manual_seed(4)
        prior = torch.randn(b, 2)
        with torch.no_grad():
            d_prior, d_code = torch.sigmoid(model.disc(prior).double()), torch.sigmoid(logits)
        expected = (-torch.log(d_prior).mean() - torch.log(1 - d_code).mean()).item()
        assert disc.loss.item() == pytest.approx(expected, rel=1e-5)
        assert disc.logs["d_prior"] == pytest.approx(d_prior.mean().item(), rel=1e-5)
        assert disc.logs["d_code"] == pytest.approx(d_code.mean().item(), rel=1e-5)


def test_wae_samples_are_the_deterministic_decoder():
    model = small("wae", sample_noise=True)
    assert not any(p.requires_grad for p in model.obs.parameters())
    a = model.sample(6, generator=seeded(4))
    with torch.no_grad():
        z = model.prior_sample(6, seeded(4))
        expect = clamp_to_model_space(model.generate_mean(z), TOY)
    assert torch.equal(a, expect)


# --------------------------------------------------------------------------- conditional AAE


def test_class_prior_means():
    means = class_prior_means(4, 3, radius=2.0)
    assert means.shape == (4, 3)
    torch.testing.assert_close(means.norm(dim=1), torch.full((4,), 2.0))
    torch.testing.assert_close(means[:, 2], torch.zeros(4))
    assert torch.cdist(means, means).add(torch.eye(4) * 10).min() > 2.0  # distinct components
    line = class_prior_means(3, 1, radius=1.0)
    assert line.squeeze(1).tolist() == [-1.0, 0.0, 1.0]


def test_conditional_aae_draws_from_the_labels_component():
    model = small("aae", LABELLED, conditional=True, prior_radius=4.0, prior_std=0.5)
    assert model.disc[0].in_features == 2 + 3  # z and the one-hot label
    n = 4000
    for k in range(3):
        y = torch.full((n,), k)
        z = model.prior_sample(n, seeded(k), y)  # (n, Z)
        torch.testing.assert_close(z.mean(0), model.prior_means[k], atol=0.05, rtol=0)
        torch.testing.assert_close(z.std(0), torch.full((2,), 0.5), atol=0.03, rtol=0)
    y = torch.tensor([0, 1, 2, 2, 1])
    s = model.sample(5, generator=seeded(5), condition=y)
    assert s.shape == (5, 2) and torch.isfinite(s).all()
    g = seeded(5)  # sample() draws z, then the decoder's noise, from one generator
    with torch.no_grad():
        expect = model.decode_sample(model.prior_sample(5, g, y), g)
    assert torch.equal(s, expect)
    other = model.sample(5, generator=seeded(5), condition=torch.zeros(5, dtype=torch.long))
    assert not torch.equal(s, other)
    with pytest.raises(ValueError, match="conditional"):
        model.sample(5, generator=seeded(5))
    with pytest.raises(ValueError, match="labels"):
        model.loss(toy_batch(labelled=False), "disc")
    with pytest.raises(ValueError, match="0..2"):
        model.sample(2, condition=torch.tensor([0, 3]))


def test_unconditional_aae_refuses_labels_and_unlabelled_data_refuses_conditional():
    with pytest.raises(ValueError, match="unconditional"):
        small("aae").sample(2, condition=torch.zeros(2, dtype=torch.long))
    with pytest.raises(ConfigError, match="num_classes"):
        small("aae", TOY, conditional=True)


def test_conditional_aae_discriminator_judges_codes_by_their_labels_component():
    # An encoder that puts class k's codes on component k + 1 (mod 3): the model's "disc" loss
    # must teach D that μ_{k+1} is fake for label k while μ_k is real for it, so D reads the
    # label and the prior draws from the label's own component.
    model = small("aae", LABELLED, conditional=True, lr_disc=3e-3)
    (disc,) = [g for g in model.step_groups() if g.name == "disc"]
    opt = disc.make_optimizer()
    for seed in range(200):
        batch = toy_batch(seed=seed, labelled=True)
        model.encode = lambda x, generator=None, y=batch.y: model.prior_sample(len(x), None, (y + 1) % 3)
        out = model.loss(batch, "disc")
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    eye = torch.eye(3)
    with torch.no_grad():
        logits = torch.stack([model.discriminate(model.prior_means, eye[k].expand(3, 3)).squeeze(1)
                              for k in range(3)])  # (label k, component j)
    k = torch.arange(3)
    assert (logits[k, k] > 2).all() and (logits[k, (k + 1) % 3] < -2).all(), logits  # σ: > 0.88, < 0.12


# --------------------------------------------------------------------------- training


@pytest.mark.parametrize("family,overrides", [
    ("aae", {}), ("aae", {"encoder": "gaussian"}), ("wae", {}), ("wae", {"penalty": "gan"}),
    ("avb", {}), ("avb", {"adaptive_contrast": True, "ac_samples": 4}),
])
def test_trains_on_a_toy_batch_and_samples(family, overrides):
    model = small(family, **overrides)
    history = run(model, 120)
    assert all(math.isfinite(v) for logs in history for v in logs.values())
    first = sum(h["recon"] for h in history[:10]) / 10
    last = sum(h["recon"] for h in history[-10:]) / 10
    assert last < 0.6 * first, (first, last)
    s = model.sample(7, generator=seeded(1))
    assert s.shape == (7, 2) and torch.isfinite(s).all()
    x = toy_batch(5).x
    assert model.reconstruct(x).shape == x.shape
    with pytest.raises(NotImplementedError):
        model.log_prob(x)


def test_adaptive_contrast_normalises_each_rows_draws():
    model = small("avb", adaptive_contrast=True, ac_samples=6)
    x = toy_batch(10).x
    with torch.no_grad():
        z, mu, var, z_norm = model.normalised_samples(x)
    assert z.shape == z_norm.shape == (6, 10, 2) and mu.shape == var.shape == (10, 2)
    torch.testing.assert_close(z_norm.mean(0), torch.zeros(10, 2), atol=1e-5, rtol=0)
    assert (z_norm.var(0, unbiased=False) <= 1 + 1e-5).all()  # the variance floor only shrinks z̃
    torch.testing.assert_close(z_norm * var.sqrt() + mu, z)
    # The adaptive-contrast ELBO by hand on the encoder noise the loss draws: m = 6 draws z = E(x, ε) per
    # row, their moments (plus the variance floor 1e-4), z̃ = (z - μ)/σ, then
    # -E log p(x|z) + E T(x, z̃) + KL(N(μ, σ²) ‖ N(0, I)).
    torch.manual_seed(9)
    out = model.loss(Batch(x), "ae")
    torch.manual_seed(9)
    eps = torch.randn(6, 10, model.config.noise_dim)
    with torch.no_grad():
        z = model.encoder(torch.cat([x.expand(6, 10, 2), eps], dim=-1)).double()  # (6, 10, Z)
        mu = z.mean(0)
        var = ((z - mu) ** 2).mean(0) + 1e-4
        z_tilde = (z - mu) / var.sqrt()
        t = model.disc(torch.cat([x.expand(6, 10, 2), z_tilde.float()], dim=-1)).double().mean().item()
        mean = model.decoder(z.float()).double()  # (6, 10, 2): the Gaussian head's mean
    s = model.obs.log_std.detach().double().exp()  # (2,)
    recon = (0.5 * ((x.double() - mean) / s) ** 2 + s.log() + 0.5 * math.log(2 * math.pi)).sum(-1).mean().item()
    kl_r = (-0.5 * var.log() + (var + mu ** 2) / 2 - 0.5).sum(-1).mean().item()
    assert kl_r > 0.1 and abs(t) > 1e-3  # each term visible at the tolerance below
    assert out.logs["recon"] == pytest.approx(recon, rel=1e-5)
    assert out.logs["t"] == pytest.approx(t, rel=1e-4, abs=1e-6)
    assert out.logs["kl_r"] == pytest.approx(kl_r, rel=1e-5)
    assert out.loss.item() == pytest.approx(recon + t + kl_r, rel=1e-5)
