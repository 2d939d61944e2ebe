"""Autoregressive families (pixelcnn, gated_pixelcnn, pixelcnnpp, pixelrnn): causality by autograd, no blind
spot in the gated stacks, normalised per-pixel distributions, log_prob as the chain rule, samples
that follow log_prob, class conditioning, training, and the vector (MADE) fallback."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import grad

import gm.models  # noqa: F401  (fills the registry)
from gm.core.config import ConfigError, build
from gm.data.dataspec import DataSpec
from gm.models.base import Batch, load_model, save_model
from gm.models.pixelcnnpp import params_per_pixel
from gm.nn.gated_pixelcnn import GatedPixelCNN
from gm.nn.observation import bin_centres, levels_of
from gm.nn.pixelcnn import PixelCNN
from gm.core.registry import FAMILIES as REGISTRY
from tests.helpers import DIGITS, TOY, seeded, train_single_group

FAMILIES = ["pixelcnn", "gated_pixelcnn", "pixelcnnpp", "pixelrnn"]
GREY = DataSpec(shape=(1, 4, 4), kind="image", num_classes=3, levels=5)
TWO = DataSpec(shape=(2, 3, 3), kind="image", levels=3)  # two channels: R -> G order within a pixel


def make(family: str, data: DataSpec, **overrides):
    """A tiny model of `family`: 8 channels, 2 layers/blocks, small kernels, no dropout."""
    cls = REGISTRY[family]
    cfg = {"hidden": 8, "depth": 2, **({"components": 3, "dropout": 0.0} if family == "pixelcnnpp" else {"kernel": 3})}
    torch.manual_seed(0)
    return cls(build(cls.config_cls, {**cfg, **overrides}, f"test.{family}"), data)


def perturb(model: torch.nn.Module, std: float, seed: int = 0) -> None:
    """Random weights on top of the initial ones: a far from uniform, but still causal, model."""
    g = seeded(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(std * torch.randn(p.shape, generator=g))


def random_levels(data: DataSpec, b: int, seed: int) -> torch.Tensor:
    return torch.randint(0, data.levels, (b, *data.shape), generator=seeded(seed))  # (B, C, H, W)


def labels_for(model, b: int) -> torch.Tensor | None:
    return torch.arange(b) % model.n_classes if model.n_classes else None


def sensitivity(out: torch.Tensor, inp: torch.Tensor, r: int, c: int) -> torch.Tensor:
    """Which input positions the outputs at (r, c) depend on: (H, W) bool, by autograd."""
    (g,) = grad(out[:, :, r, c].sum(), inp, retain_graph=True)  # (B, channels, H, W)
    return g.abs().sum((0, 1)) > 0


def assert_strictly_causal(out: torch.Tensor, inp: torch.Tensor) -> None:
    """Outputs at raster position j: zero gradient w.r.t. inputs at positions >= j, some gradient
    from earlier ones (so the check is not vacuous), the left neighbour included."""
    height, width = out.shape[-2:]
    for j in range(height * width):
        r, c = divmod(j, width)
        seen = sensitivity(out, inp, r, c).flatten()
        assert not seen[j:].any(), f"position {(r, c)} depends on {seen[j:].nonzero().flatten().tolist()} (>= {j})"
        if j > 0:
            assert seen[:j].any(), f"position {(r, c)} sees nothing"
        if c > 0:
            assert seen[j - 1], f"position {(r, c)} does not see its left neighbour"


# --------------------------------------------------------------------------- causality


@pytest.mark.parametrize("family", ["pixelcnn", "gated_pixelcnn"])
@pytest.mark.parametrize("data", [DataSpec((1, 5, 5), "image", levels=4), TWO], ids=["grey5x5", "two-channel"])
def test_symbol_nets_are_causal_on_the_channel_grid(family, data):
    model = make(family, data)
    grid = model.body
    s = grid.symbols(random_levels(data, 3, seed=1))  # (B, H, W·C)
    onehot = F.one_hot(s, grid.net.n_symbols).permute(0, 3, 1, 2).float().requires_grad_(True)
    assert_strictly_causal(grid.net(onehot), onehot)  # grid order = pixels, channels in turn within a pixel


@pytest.mark.parametrize("shape,resolutions", [((1, 5, 5), 2), ((2, 6, 6), 3)])
def test_pixelcnnpp_params_depend_only_on_earlier_whole_pixels(shape, resolutions):
    data = DataSpec(shape, "image", levels=4)
    model = make("pixelcnnpp", data, resolutions=resolutions)
    x = bin_centres(random_levels(data, 3, seed=1), data).requires_grad_(True)  # (B, C, H, W)
    params = model.body.net(x)  # (B, P, H, W)
    assert params.shape == (3, params_per_pixel(shape[0], 3), *shape[1:])
    assert_strictly_causal(params, x)  # no channel of pixel (r, c) reaches its own parameters


def test_gated_stacks_have_no_blind_spot_unlike_the_masked_pixelcnn():
    k, h, w, (r, c) = 4, 7, 7, (5, 3)
    s = torch.randint(0, k, (4, h, w), generator=seeded(0))
    onehot = F.one_hot(s, k).permute(0, 3, 1, 2).float().requires_grad_(True)
    torch.manual_seed(0)
    gated = GatedPixelCNN(k, channels=8, n_layers=2, kernel_size=3, block_kernel_size=3)
    plain = PixelCNN(k, channels=8, n_blocks=1, kernel_size=3, block_kernel_size=3)  # also 2 spatial layers
    seen_gated = sensitivity(gated(onehot), onehot, r, c)
    # Two 3×3 layers: the whole rectangle of rows r-3..r-1 and columns c±2, plus row r from c-2.
    expected = torch.zeros(h, w, dtype=torch.bool)
    expected[r - 3:r, c - 2:c + 3] = True
    expected[r, c - 2:c] = True
    assert torch.equal(seen_gated, expected), seen_gated.int()
    seen_plain = sensitivity(plain(onehot), onehot, r, c)
    assert seen_plain[r - 2, c + 2], "the plain PixelCNN reaches two rows up, two columns right..."
    assert not seen_plain[r - 1, c + 2], "...but misses the nearer pixel one row up: its blind spot"
    assert not (seen_plain & ~expected).any()


# --------------------------------------------------------------------------- normalisation and the chain rule


def pixel_values(data: DataSpec) -> torch.Tensor:
    """Every value of one pixel, (L^C, C) levels."""
    axes = [torch.arange(data.levels)] * data.shape[0]
    return torch.cartesian_prod(*axes).view(-1, data.shape[0])


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("data", [GREY, TWO], ids=["grey", "two-channel"])
@torch.no_grad()
def test_every_pixel_distribution_sums_to_one(family, data):
    model = make(family, data).eval()
    perturb(model, 0.3)
    base, values = random_levels(data, 1, seed=2)[0], pixel_values(data)  # (C, H, W), (M, C)
    _, h, w = data.shape
    images = base.repeat(h * w, values.shape[0], 1, 1, 1)  # (H·W, M, C, H, W)
    for j in range(h * w):
        images[j, :, :, j // w, j % w] = values  # pixel j takes every value, the rest stay fixed
    mass = model.body.pixel_log_mass(bin_centres(images.flatten(0, 1), data))  # (H·W·M, H, W)
    mass = mass.view(h * w, values.shape[0], h * w)[torch.arange(h * w), :, torch.arange(h * w)]  # (H·W, M)
    assert torch.allclose(torch.logsumexp(mass, dim=1), torch.zeros(h * w), atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("data,conditional", [(GREY, False), (GREY, True), (TWO, False)],
                         ids=["grey", "grey-conditional", "two-channel"])
@torch.no_grad()
def test_log_prob_is_the_sum_of_one_position_at_a_time(family, data, conditional):
    model = make(family, data, conditional=conditional).eval()
    perturb(model, 0.3)
    x = data.to_model(random_levels(data, 3, seed=3), generator=seeded(4))
    noise = data.to_model(random_levels(data, 3, seed=5), generator=seeded(6))
    labels = labels_for(model, 3)
    _, h, w = data.shape
    order = torch.arange(h * w).view(1, 1, h, w)
    total = torch.zeros(3)
    for j in range(h * w):
        xj = torch.where(order <= j, x, noise)  # positions after j scrambled
        total += model.body.pixel_log_mass(xj, labels)[:, j // w, j % w]
    full = model.log_prob(x, condition=labels)
    assert torch.allclose(total + data.dim * math.log(data.scale), full, atol=1e-4)


def test_pixelcnn_is_the_shared_pixelcnn_on_grey_images():
    model = make("pixelcnn", GREY).eval()
    v = random_levels(GREY, 4, seed=0)
    x = GREY.to_model(v, generator=seeded(1))
    direct = model.body.net.log_prob(v[:, 0])  # gm.nn.pixelcnn.PixelCNN on the level grid
    assert torch.allclose(model.log_prob(x), direct + GREY.dim * math.log(GREY.scale), atol=1e-5)


@torch.no_grad()
def test_pixelcnnpp_single_channel_is_the_plain_logistic_mixture():
    # One channel: P(v) = Σ_k π_k [σ((x + ½ - μ_k)/s_k) - σ((x - ½ - μ_k)/s_k)] with x = v + ½ the bin
    # centre in level units, the lowest level taking σ((x + ½ - μ_k)/s_k) (the left tail) and the
    # highest 1 - σ((x - ½ - μ_k)/s_k) (the right tail); written out here, in float64, from the
    # mixture's parameters.
    model = make("pixelcnnpp", GREY).eval()
    perturb(model, 0.15)  # far from uniform (masses 0.05-0.5), scales of one to a few bins
    v = random_levels(GREY, 4, seed=0)  # (4, 1, 4, 4) levels in 0..4
    levels = GREY.levels
    assert (v == 0).any() and (v == levels - 1).any() and ((v > 0) & (v < levels - 1)).any()
    x = GREY.to_model(v, generator=seeded(1))  # dequantized: the model must read the level alone
    logit_pi, mean, log_scale, _ = model.body.mixture(bin_centres(v, GREY))  # (B, H, W, K), (B, 1, H, W, K)
    # Model space is u ↦ (u - L/2)/(L/2) for u in [0, L): back to level units, μ ↦ (μ + 1)·L/2, s ↦ s·L/2.
    mu = (mean[:, 0].double() + 1) * levels / 2  # (B, H, W, K)
    s = log_scale[:, 0].double().exp() * levels / 2
    centre = v[:, 0].double().unsqueeze(-1) + 0.5  # (B, H, W, 1)
    upper = torch.sigmoid((centre + 0.5 - mu) / s)
    lower = torch.sigmoid((centre - 0.5 - mu) / s)
    edge = v[:, 0].unsqueeze(-1).expand_as(mu)
    per_component = torch.where(edge == 0, upper, torch.where(edge == levels - 1, 1 - lower, upper - lower))
    pi = torch.softmax(logit_pi.double(), dim=-1)
    mass = (pi * per_component).sum(-1)  # (B, H, W)
    got = model.body.pixel_log_mass(x).double()  # (B, H, W)
    assert mass.min() > 1e-2  # no bin near the underflow fallback: the plain formula is the reference
    torch.testing.assert_close(got.exp(), mass, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(got, mass.log(), rtol=0, atol=1e-5)
    # And log_prob is their sum over pixels, plus the model-space density's D·log(scale).
    torch.testing.assert_close(model.log_prob(x).double(), mass.log().sum((1, 2)) + GREY.dim * math.log(levels / 2),
                               rtol=0, atol=1e-4)


@torch.no_grad()
def test_pixelcnnpp_interior_rgb_pixel_by_hand():
    # One interior pixel of a colour image, in scalar arithmetic: with x = v + ½ each channel's bin centre
    # in level units and μ, s moved to level units, P(pixel) = Σ_k π_k Π_c [σ((x_c + ½ − μ_ck)/s_ck) −
    # σ((x_c − ½ − μ_ck)/s_ck)], the G mean shifted by α·r and the B mean by β·r + γ·g (Eq. 3; r, g the
    # model-space centres of the channels already drawn, as the network reads them).
    data = DataSpec(shape=(3, 2, 2), kind="image", levels=17)
    model = make("pixelcnnpp", data, components=2).eval()
    perturb(model, 0.15)
    v = torch.tensor([[[[3, 9], [12, 7]], [[5, 2], [8, 10]], [[14, 6], [4, 11]]]])  # (1, 3, 2, 2), all interior
    xc = bin_centres(v, data)
    logit_pi, mean, log_scale, coeff = model.body.mixture(xc)  # at pixel (1, 1): the last, with three before it
    r, c = 1, 1
    half = data.levels / 2
    centres = [float(xc[0, ch, r, c]) for ch in range(3)]
    weights = [math.exp(float(t)) for t in logit_pi[0, r, c]]
    total, smallest = 0.0, 1.0
    for k in range(2):
        mu = [float(mean[0, ch, r, c, k]) for ch in range(3)]
        a = [float(coeff[0, j, r, c, k]) for j in range(3)]  # α_gr, α_br, α_bg: coefficients 0, 1, 2
        mu[1] += a[0] * centres[0]
        mu[2] += a[1] * centres[0] + a[2] * centres[1]
        mass = weights[k] / sum(weights)
        for ch in range(3):
            m, s = (mu[ch] + 1) * half, math.exp(float(log_scale[0, ch, r, c, k])) * half  # level units
            x = int(v[0, ch, r, c]) + 0.5
            term = 1 / (1 + math.exp(-(x + 0.5 - m) / s)) - 1 / (1 + math.exp(-(x - 0.5 - m) / s))
            smallest = min(smallest, term)
            mass *= term
        total += mass
    got = float(model.body.pixel_log_mass(data.to_model(v, generator=seeded(1)))[0, r, c])
    assert smallest > 1e-3  # every channel's bin: the plain difference of sigmoids, not the underflow fallback
    assert got == pytest.approx(math.log(total), abs=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
@torch.no_grad()
def test_log_prob_ignores_dequantization_noise_and_is_a_log_mass(family):
    model = make(family, GREY).eval()
    v = random_levels(GREY, 5, seed=0)
    a = model.log_prob(GREY.to_model(v, generator=seeded(1)))
    b = model.log_prob(GREY.to_model(v, generator=seeded(2)))
    assert torch.allclose(a, b)
    assert (a + GREY.log_det_to_model <= 0).all()  # data space: log P(v) of a discrete image


# --------------------------------------------------------------------------- sampling


TINY = [DataSpec((1, 1, 2), "image", levels=3), DataSpec((2, 1, 1), "image", levels=3)]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("data", TINY, ids=["two-pixels", "two-channels"])
@torch.no_grad()
def test_samples_follow_log_prob_which_sums_to_one(family, data):
    model = make(family, data).eval()
    # Far from uniform; PixelCNN++'s deeper residual stack saturates (one component, huge scales) sooner.
    perturb(model, 0.3 if family == "pixelcnnpp" else 0.5, seed=2)
    images = pixel_values(DataSpec((data.dim,), "toy", levels=3)).view(-1, *data.shape)  # all 9 images
    p = (model.log_prob(bin_centres(images, data)) - data.dim * math.log(data.scale)).exp()  # (9,)
    assert p.sum().item() == pytest.approx(1.0, abs=1e-5)
    assert p.max() > 0.2, "the perturbed model should not be close to uniform"
    n = 4000
    v = levels_of(model.sample(n, generator=seeded(0)), data).flatten(1)  # (n, 2)
    freq = torch.bincount(v[:, 0] * 3 + v[:, 1], minlength=9).float() / n
    assert ((freq - p).abs() <= 4 * (p * (1 - p) / n).sqrt() + 2e-3).all(), (freq, p)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("data", [GREY, TWO], ids=["grey", "two-channel"])
def test_sampling_is_reproducible_on_bin_centres_in_raster_passes(family, data):
    model = make(family, data)
    calls = []
    model.body.net.register_forward_hook(lambda *_: calls.append(1))
    a = model.sample(6, generator=seeded(7))
    c, h, w = data.shape
    # The documented sampling cost; pixelrnn carries its LSTM states instead of full passes (PixelRNN.sample_grid).
    assert len(calls) == {"pixelcnnpp": h * w, "pixelrnn": 0}.get(family, h * w * c)
    assert torch.equal(a, model.sample(6, generator=seeded(7)))
    assert not torch.equal(a, model.sample(6, generator=seeded(8)))
    assert a.shape == (6, *data.shape)
    assert torch.equal(a, bin_centres(levels_of(a, data), data))  # exactly on the bin centres


@torch.no_grad()
def test_pixelcnnpp_channels_of_a_pixel_share_one_mixture_component(monkeypatch):
    # Two equally likely components, all channels low (-0.9) or all high (+0.9), narrow logistics and
    # no coupling: a shared component gives only (0, 0) and (2, 2); one per channel would mix them.
    data = TINY[1]  # (2, 1, 1), 3 levels
    model = make("pixelcnnpp", data, components=2).eval()

    def fixed_mixture(xc, labels=None):
        b, _, h, w = xc.shape
        mean = torch.tensor([-0.9, 0.9]).expand(b, 2, h, w, 2)  # (B, C, H, W, K)
        return (torch.zeros(b, h, w, 2), mean, torch.full_like(mean, -5.0), torch.zeros(b, 1, h, w, 2))

    monkeypatch.setattr(model.body, "mixture", fixed_mixture)
    v = levels_of(model.sample(400, generator=seeded(0)), data).flatten(1)  # (n, 2)
    assert (v[:, 0] == v[:, 1]).all() and set(v[:, 0].tolist()) == {0, 2}
    pair = bin_centres(torch.tensor([[0, 0], [2, 2], [0, 2]]).view(3, 2, 1, 1), data)
    p = model.body.pixel_log_mass(pair).flatten().exp()
    assert torch.allclose(p, torch.tensor([0.5, 0.5, 0.0]), atol=1e-4)


# --------------------------------------------------------------------------- class conditioning


@pytest.mark.parametrize("family", FAMILIES)
@torch.no_grad()
def test_class_conditional_models(family):
    model = make(family, GREY, conditional=True).eval()
    perturb(model, 0.3)
    x = GREY.to_model(random_levels(GREY, 4, seed=0), generator=seeded(1))
    per_class = torch.stack([model.log_prob(x, torch.full((4,), y)) for y in range(3)])  # (3, B)
    assert (per_class[0] - per_class[1]).abs().min() > 1e-4, "the label must change the likelihood"
    assert torch.allclose(model.log_prob(x), torch.logsumexp(per_class, 0) - math.log(3), atol=1e-5)
    y0, y1 = torch.zeros(8, dtype=torch.long), torch.ones(8, dtype=torch.long)
    a = model.sample(8, generator=seeded(2), condition=y0)
    assert torch.equal(a, model.sample(8, generator=seeded(2), condition=y0))
    assert not torch.equal(a, model.sample(8, generator=seeded(2), condition=y1))
    with pytest.raises(ValueError, match="conditional"):
        model.sample(8, generator=seeded(2))


def test_gated_logits_change_with_the_label_at_every_position():
    model = make("gated_pixelcnn", GREY, conditional=True)
    s = model.body.symbols(random_levels(GREY, 2, seed=0))
    diff = (model.body.level_logits(s, torch.zeros(2, dtype=torch.long))
            - model.body.level_logits(s, torch.full((2,), 2))).abs().amax(-1)  # (B, C, H, W)
    assert (diff > 1e-6).all()  # the label enters every gate, so even the first pixel moves
    with pytest.raises(ValueError, match="labels"):
        model.body.level_logits(s)


def test_conditional_loss_needs_labels_and_labelled_data():
    from gm.models.base import Batch

    model = make("gated_pixelcnn", GREY, conditional=True)
    x = GREY.to_model(random_levels(GREY, 4, seed=0))
    with pytest.raises(ValueError, match="labels"):
        model.loss(Batch(x), "ar")
    assert torch.isfinite(model.loss(Batch(x, torch.arange(4) % 3), "ar").loss)
    with pytest.raises(ConfigError, match="num_classes"):
        make("gated_pixelcnn", DataSpec((1, 4, 4), "image", levels=5), conditional=True)


# --------------------------------------------------------------------------- training and configs


def digits_like(n: int, seed: int) -> torch.Tensor:
    """Bright bars on a dark 8×8 background with a little noise: levels 0..16, (n, 1, 8, 8)."""
    g = seeded(seed)
    v = torch.randint(0, 2, (n, 1, 8, 8), generator=g)
    rows, cols = torch.randint(1, 7, (n,), generator=g), torch.randint(1, 7, (n,), generator=g)
    for i in range(n):
        v[i, 0, rows[i], 1:7] = 15
        v[i, 0, 1:7, cols[i]] = 16
    return v


@pytest.mark.parametrize("family", FAMILIES)
def test_training_lowers_the_nll(family):
    model = make(family, DIGITS, lr=3e-3, **({"dropout": 0.1} if family == "pixelcnnpp" else {}))
    x = DIGITS.to_model(digits_like(16, seed=0), generator=seeded(1))

    def check(out):
        # Model-space nats -> data-space bits/dim: log P(v) = log p_model(x) - D·log(L/2), D = 64, L = 17.
        assert out.logs["bits_per_dim"] == pytest.approx((out.loss.item() + 64 * math.log(8.5)) / (64 * math.log(2)),
                                                         rel=1e-6)
        assert 0 < out.logs["bits_per_dim"] < math.log2(DIGITS.levels) + 3  # near log2(17) at the start

    losses = train_single_group(model, x, steps=8, check=check)
    assert losses[-1] < 0.9 * losses[0], losses
    assert all(math.isfinite(v) for v in losses)


@pytest.mark.parametrize("family,bad", [
    ("pixelcnn", {"kernel": 4}), ("pixelcnn", {"block_kernel": 2}), ("gated_pixelcnn", {"kernel": 1}),
    ("gated_pixelcnn", {"depth": 0}), ("pixelcnnpp", {"dropout": 1.0}), ("pixelcnnpp", {"resolutions": 0}),
    ("pixelcnnpp", {"components": 0}),
])
def test_bad_configs_raise(family, bad):
    with pytest.raises(ConfigError, match=next(iter(bad))):
        build(REGISTRY[family].config_cls, bad, "x")


@pytest.mark.parametrize("family", FAMILIES)
def test_discrete_vectors_are_refused(family):
    with pytest.raises(ConfigError, match="discrete images"):
        make(family, DataSpec((5,), "toy", levels=4))


# --------------------------------------------------------------------------- vectors: the MADE fallback


@pytest.mark.parametrize("family", FAMILIES)
def test_vector_fallback_is_autoregressive_and_normalised(family):
    model = make(family, TOY).double().eval()
    perturb(model, 0.3)
    x = torch.randn(5, 2, dtype=torch.float64, requires_grad=True)
    params = torch.stack(model.body.params(x, None))  # (3, B, D, K)
    (g0,) = grad(params[:, :, 0].sum(), x, retain_graph=True)
    (g1,) = grad(params[:, :, 1].sum(), x)
    assert (g0 == 0).all() and (g1[:, 1] == 0).all() and (g1[:, 0] != 0).any()
    axis = torch.linspace(-20, 20, 401, dtype=torch.float64)
    with torch.no_grad():
        mass = model.log_prob(torch.cartesian_prod(axis, axis)).exp().sum() * (axis[1] - axis[0]) ** 2
    assert mass.item() == pytest.approx(1.0, abs=2e-3)


@pytest.mark.parametrize("family", FAMILIES)
def test_polyak_averaged_weights_score_and_sample_while_the_live_ones_train(family, tmp_path):
    # ema: d: after each step avg <- d_t·avg + (1 - d_t)·θ, d_t = min(d, (1 + t)/(10 + t)) (gm.nn.ema); log_prob
    # and sample use the average, the loss the live weights; the average is saved with the model.
    model = make(family, GREY, ema=0.9, lr=1e-2)
    x = GREY.to_model(random_levels(GREY, 16, seed=0), generator=seeded(1))
    avg = {k: v.detach().clone() for k, v in model.body.named_parameters()}
    losses = train_single_group(model, x, 5)
    assert all(math.isfinite(v) for v in losses)
    # the average by hand, from the same five steps replayed on a copy without one
    replay = make(family, GREY, lr=1e-2)
    (group,) = replay.step_groups()
    opt = group.make_optimizer()
    for t in range(5):
        out = replay.loss(Batch(x), group.name)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        d = min(0.9, (1 + t) / (10 + t))
        with torch.no_grad():
            for k, p in replay.body.named_parameters():
                avg[k].mul_(d).add_(p, alpha=1 - d)
    live = {k: v.detach().clone() for k, v in model.body.named_parameters()}
    for k, v in replay.body.named_parameters():
        torch.testing.assert_close(live[k], v.detach(), rtol=1e-3, atol=1e-4)  # the same live weights
    with torch.no_grad():
        for k, p in replay.body.named_parameters():
            p.copy_(avg[k])
    torch.testing.assert_close(model.log_prob(x), replay.log_prob(x), rtol=1e-4, atol=1e-3)
    assert not torch.allclose(model.log_prob(x), make(family, GREY).log_prob(x))  # not the initial weights
    for k, v in model.body.named_parameters():  # scoring put the live weights back
        assert torch.equal(v.detach(), live[k])
    torch.testing.assert_close(model.sample(3, generator=seeded(4)), replay.sample(3, generator=seeded(4)))
    save_model(model, tmp_path / "m")
    torch.testing.assert_close(load_model(tmp_path / "m").log_prob(x), model.log_prob(x))
