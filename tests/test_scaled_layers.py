"""The scaled GANs' building blocks (gm/nn/scaled.py), each against a hand computation or a closed form
written here independently of the code under test."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from gm.nn.scaled import (
    AdaIN,
    ConditionalBatchNorm2d,
    EqualConv2d,
    EqualLinear,
    MinibatchStdDev,
    NoiseInjection,
    PixelNorm,
    ProjectionHead,
    SelfAttention,
    apply_spectral_norm,
    fade_in,
    hinge_critic_loss,
    hinge_generator_loss,
    orthogonal_regularization,
    truncate_w,
    truncated_noise,
)
from tests.helpers import seeded


def test_pixel_norm_by_hand():
    x = torch.tensor([[3.0, 4.0], [0.0, -2.0]]).view(1, 2, 1, 2)  # channels (3, 0) and (4, -2) at two pixels
    out = PixelNorm()(x)
    expected = torch.tensor([[3 / math.sqrt(4.5), 4 / math.sqrt(10.0)], [0.0, -2 / math.sqrt(10.0)]]).view(1, 2, 1, 2)
    torch.testing.assert_close(out, expected)
    # Every pixel's features then have unit mean square (up to ε = 1e-8).
    y = PixelNorm()(torch.randn(3, 5, 4, 4, generator=seeded(0)))
    torch.testing.assert_close(y.pow(2).mean(dim=1), torch.ones(3, 4, 4))


def test_equal_linear_scales_its_weight_at_run_time():
    torch.manual_seed(0)
    layer = EqualLinear(8, 3)  # He constant sqrt(2 / 8) = 0.5
    assert torch.count_nonzero(layer.bias) == 0
    x = torch.randn(4, 8, generator=seeded(1))
    torch.testing.assert_close(layer(x), x @ (0.5 * layer.weight.detach()).t())
    # The stored weight is N(0, 1) whatever the fan-in.
    big = EqualLinear(1000, 200)
    assert big.weight.mean().item() == pytest.approx(0.0, abs=0.01)
    assert big.weight.std().item() == pytest.approx(1.0, abs=0.01)


def test_equal_linear_lr_multiplier():
    torch.manual_seed(0)
    layer = EqualLinear(400, 300, gain=1.0, lr_mul=0.01, bias_init=2.0)
    # Stored N(0, 1/0.01²): the effective weight still starts at std gain / sqrt(fan_in) = 1/20.
    assert layer.weight.std().item() == pytest.approx(100.0, rel=0.01)
    x = torch.randn(2, 400, generator=seeded(1))
    expected = x @ (layer.weight.detach() * 0.01 / 20.0).t() + 2.0  # bias starts at bias_init
    torch.testing.assert_close(layer(x), expected)
    # The stored weight's gradient is the effective one's times the run-time scale 0.01/20 ...
    effective = (layer.weight.detach() * 0.01 / 20.0).requires_grad_()
    (x @ effective.t()).sum().backward()
    layer(x).sum().backward()
    torch.testing.assert_close(layer.weight.grad, effective.grad * (0.01 / 20.0))
    # ... so Adam's first step (lr in every stored entry) moves the effective weight by lr · 0.01 / 20:
    # lr_mul times the step of a layer without the multiplier.
    before = layer.weight.detach() * (0.01 / 20.0)
    torch.optim.Adam(layer.parameters(), lr=0.1, eps=1e-30).step()
    step = (layer.weight.detach() * (0.01 / 20.0) - before).abs()
    torch.testing.assert_close(step, torch.full_like(step, 0.1 * 0.01 / 20.0))


def test_equal_conv_scales_its_weight_at_run_time():
    torch.manual_seed(0)
    conv = EqualConv2d(2, 4, 3, padding=1)  # fan-in 2·3·3 = 18: He constant sqrt(2/18) = 1/3
    assert torch.count_nonzero(conv.bias) == 0
    x = torch.randn(2, 2, 5, 5, generator=seeded(1))
    torch.testing.assert_close(conv(x), nn.functional.conv2d(x, conv.weight.detach() / 3.0, padding=1))


def test_minibatch_stddev_by_hand():
    x = torch.randn(8, 3, 2, 2, generator=seeded(0))
    out = MinibatchStdDev(group_size=4)(x)
    assert out.shape == (8, 4, 2, 2)
    torch.testing.assert_close(out[:, :3], x)
    m = 8 // 4  # ProGAN's grouping: sample n is in group n mod M, with members n mod M, + M, + 2M, ...
    for n in range(8):
        members = x[n % m::m]  # (4, C, H, W)
        assert len(members) == 4
        deviation = members - members.mean(dim=0)
        std = torch.sqrt((deviation ** 2).mean(dim=0) + 1e-8)
        torch.testing.assert_close(out[n, 3], torch.full((2, 2), std.mean().item()))


def test_minibatch_stddev_refuses_an_indivisible_batch():
    with pytest.raises(ValueError, match="batch size 6 is not divisible by the group size 4"):
        MinibatchStdDev(group_size=4)(torch.zeros(6, 1, 2, 2))
    assert MinibatchStdDev(group_size=4)(torch.zeros(2, 1, 2, 2)).shape == (2, 2, 2, 2)  # a group of min(4, B)


def test_fade_in_by_hand():
    low = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2)
    high = torch.arange(16.0).view(1, 1, 4, 4)
    up = torch.tensor([[1.0, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]]).view(1, 1, 4, 4)
    torch.testing.assert_close(fade_in(low, high, 0.25), 0.75 * up + 0.25 * high)
    torch.testing.assert_close(fade_in(low, high, 0.0), up)
    with pytest.raises(ValueError, match="alpha"):
        fade_in(low, high, 1.5)


@pytest.mark.parametrize("layer", ["linear", "conv"])
def test_spectral_norm_normalises_the_largest_singular_value(layer):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(20, 10) if layer == "linear" else nn.Conv2d(3, 8, 3), nn.ReLU())
    apply_spectral_norm(net, n_power_iterations=3)
    m = net[0]
    assert m.parametrizations.weight[0].n_power_iterations == 3
    x = torch.randn(4, 20) if layer == "linear" else torch.randn(4, 3, 6, 6)
    net.train()
    for _ in range(30):  # each training forward runs 3 more power iterations
        net(x)
    original = m.parametrizations.weight.original.detach().flatten(1)  # (out, rest)
    sigma_svd = torch.linalg.svdvals(original)[0]
    sn = m.parametrizations.weight[0]
    sigma_estimate = torch.dot(sn._u, original @ sn._v)
    assert sigma_estimate.item() == pytest.approx(sigma_svd.item(), rel=0.01)
    net.eval()  # no more iterations: the weight seen is W / σ_estimate
    assert torch.linalg.svdvals(m.weight.detach().flatten(1))[0].item() == pytest.approx(1.0, rel=0.01)


def test_spectral_norm_reaches_every_linear_and_conv():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 3), SelfAttention(8))
    apply_spectral_norm(net)
    normalised = [m for m in net.modules() if hasattr(m, "parametrizations")]
    assert len(normalised) == 6  # conv, linear, and f, g, h, v of the attention block


def test_self_attention_starts_as_identity_and_matches_einsum():
    torch.manual_seed(0)
    block = SelfAttention(16)
    x = torch.randn(2, 16, 3, 4, generator=seeded(1))
    assert torch.equal(block(x), x)  # γ = 0
    with torch.no_grad():
        block.gamma.fill_(1.0)
    wf, wg, wh, wv = (c.weight.detach()[:, :, 0, 0] for c in (block.f, block.g, block.h, block.v))
    xs = x.flatten(2)  # (B, C, N)
    f = torch.einsum("kc,bcn->bkn", wf, xs)
    g = torch.einsum("kc,bcn->bkn", wg, xs)
    h = torch.einsum("kc,bcn->bkn", wh, xs)
    s = torch.einsum("bki,bkj->bij", f, g)  # s_ij = f(x_i)ᵀ g(x_j)
    beta = s.exp() / s.exp().sum(dim=1, keepdim=True)  # β_{j,i}: normalised over i
    o = torch.einsum("ck,bkj->bcj", wv, torch.einsum("bij,bki->bkj", beta, h))
    torch.testing.assert_close(block(x), (o + xs).view_as(x))


def test_adain_gives_each_channel_the_style_mean_and_std():
    torch.manual_seed(0)
    ada = AdaIN(channels=3, style_dim=5)
    with torch.no_grad():
        ada.style.bias.normal_()
    x = torch.randn(2, 3, 8, 8, generator=seeded(1)) * 4 + 1
    w = torch.randn(2, 5, generator=seeded(2))
    # The style by hand: EqualLinear with gain 1 scales by 1/sqrt(5); y_s = 1 + first half, y_b = second.
    style = w @ (ada.style.weight.detach() / math.sqrt(5)).t() + ada.style.bias.detach()
    y_s, y_b = 1 + style[:, :3], style[:, 3:]
    out = ada(x, w)
    torch.testing.assert_close(out.mean(dim=(2, 3)), y_b, atol=1e-4, rtol=0)
    torch.testing.assert_close(out.std(dim=(2, 3), unbiased=False), y_s.abs(), atol=1e-4, rtol=0)


def test_noise_injection():
    layer = NoiseInjection(3)
    x = torch.randn(2, 3, 4, 4, generator=seeded(0))
    assert torch.equal(layer(x, generator=seeded(1)), x)  # weight starts at 0
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([0.5, -1.0, 2.0]))
    noise = torch.randn(2, 1, 4, 4, generator=seeded(1))  # one noise image per sample, shared by channels
    expected = x + torch.tensor([0.5, -1.0, 2.0]).view(1, 3, 1, 1) * noise
    torch.testing.assert_close(layer(x, generator=seeded(1)), expected)
    assert torch.equal(layer(x, generator=seeded(1)), layer(x, generator=seeded(1)))
    torch.testing.assert_close(layer(x, noise=noise), expected)


def test_hinge_losses_closed_form():
    real = torch.tensor([2.0, 0.5, -1.0])
    fake = torch.tensor([-2.0, 0.3, 1.5])
    # relu(1 - real) = (0, 0.5, 2), relu(1 + fake) = (0, 1.3, 2.5): (2.5 + 3.8) / 3
    assert hinge_critic_loss(real, fake).item() == pytest.approx(2.1)
    assert hinge_generator_loss(fake).item() == pytest.approx(0.2 / 3)


def test_projection_head_by_formula():
    head = ProjectionHead(feature_dim=2, num_classes=3)
    with torch.no_grad():
        head.psi.weight.copy_(torch.tensor([[1.0, -2.0]]))
        head.psi.bias.fill_(0.5)
        head.embed.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 3.0], [-1.0, 1.0]]))
    phi = torch.tensor([[2.0, 1.0], [-1.0, 4.0]])
    y = torch.tensor([1, 2])
    # ψ: 2 - 2 + 0.5 = 0.5 and -1 - 8 + 0.5 = -8.5; projections: (0, 3)·(2, 1) = 3 and (-1, 1)·(-1, 4) = 5
    torch.testing.assert_close(head(phi, y), torch.tensor([3.5, -3.5]))


def test_orthogonal_regularization_value_and_gradient():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 4), nn.Conv2d(3, 5, 3), nn.Linear(4, 2))
    apply_spectral_norm(net[2])  # regularised through its raw (un-normalised) weight
    beta = 1e-4
    raws = [net[0].weight, net[1].weight, net[2].parametrizations.weight.original]
    # The value, pair by pair: β Σ_{i≠j} (w_i · w_j)² over the output filters w_i of each layer.
    value = 0.0
    for w in raws:
        rows = w.detach().flatten(1)
        value += sum(float(rows[i] @ rows[j]) ** 2 for i in range(len(rows)) for j in range(len(rows)) if i != j)
    reg = orthogonal_regularization(net, beta=beta)
    assert reg.item() == pytest.approx(beta * value, rel=1e-5)
    reg.backward()
    for w in raws:
        m = w.detach().flatten(1)
        off = m @ m.t() * (1 - torch.eye(len(m)))
        torch.testing.assert_close(w.grad, (4 * beta * off @ m).view_as(w))
    assert net[0].bias.grad is None  # biases are not regularised


def test_conditional_batch_norm():
    torch.manual_seed(0)
    ccbn = ConditionalBatchNorm2d(3, cond_dim=4)
    plain = nn.BatchNorm2d(3, affine=False)
    x = torch.randn(5, 3, 4, 4, generator=seeded(1)) * 2 + 3
    c = torch.randn(5, 4, generator=seeded(2))
    with torch.no_grad():
        ccbn.gain.weight.zero_()
        ccbn.bias.weight.zero_()
    torch.testing.assert_close(ccbn(x, c), plain(x))
    torch.testing.assert_close(ccbn.bn.running_mean, plain.running_mean)
    torch.testing.assert_close(ccbn.bn.running_var, plain.running_var)
    ccbn.eval()
    plain.eval()
    torch.testing.assert_close(ccbn(x, c), plain(x))
    # Non-zero projections: gain 1 + c G^T and bias c B^T per sample and channel.
    with torch.no_grad():
        ccbn.gain.weight.normal_()
        ccbn.bias.weight.normal_()
    gain = 1 + c @ ccbn.gain.weight.detach().t()
    bias = c @ ccbn.bias.weight.detach().t()
    torch.testing.assert_close(ccbn(x, c), plain(x) * gain[:, :, None, None] + bias[:, :, None, None])


def test_truncated_noise_stays_within_the_threshold():
    z = truncated_noise((50_000, 4), 1.0, generator=seeded(0))
    assert z.abs().max().item() <= 1.0
    # Entries of the first draw already within the threshold are kept as drawn.
    first = torch.randn(50_000, 4, generator=seeded(0))
    inside = first.abs() <= 1.0
    assert torch.equal(z[inside], first[inside])
    # N(0, 1) truncated to [-t, t] has variance 1 - 2tφ(t) / (2Φ(t) - 1).
    t = 1.0
    pdf = math.exp(-t * t / 2) / math.sqrt(2 * math.pi)
    var = 1 - 2 * t * pdf / math.erf(t / math.sqrt(2))
    assert z.var().item() == pytest.approx(var, rel=0.02)
    small = truncated_noise((1000,), 0.04, generator=seeded(1))  # BigGAN's smallest threshold
    assert small.abs().max().item() <= 0.04
    assert torch.equal(small, truncated_noise((1000,), 0.04, generator=seeded(1)))
    with pytest.raises(ValueError, match="threshold"):
        truncated_noise((2,), 0.0)


def test_truncate_w():
    w = torch.randn(4, 6, generator=seeded(0))
    w_avg = torch.randn(6, generator=seeded(1))
    assert torch.equal(truncate_w(w, w_avg, 0.0), w_avg.expand_as(w))
    torch.testing.assert_close(truncate_w(w, w_avg, 1.0), w)
    torch.testing.assert_close(truncate_w(w, w_avg, 0.7), 0.3 * w_avg + 0.7 * w)
