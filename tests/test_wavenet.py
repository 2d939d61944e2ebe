"""WaveNet (gm.models.wavenet, gm.nn.wavenet): causality and the receptive field by autograd, the
cached (queue) generator against the full forward pass step by step, μ-law companding, global
conditioning, normalisation by enumeration, and the sequence order of images."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.autograd import grad

from gm.bench_throughput import format_generation_table, parse_overrides
from gm.core.config import ConfigError, build
from gm.data.audio import MU, mu_law_compand, mu_law_decode, mu_law_encode, mu_law_expand
from gm.data.dataspec import DataSpec
from gm.models.base import Batch
from gm.models.wavenet import WaveNetConfig, WaveNetModel
from gm.nn.observation import bin_centres, levels_of
from gm.nn.wavenet import WaveNet, receptive_field
from tests.helpers import perturb, seeded

AUDIO = DataSpec(shape=(1, 50), kind="audio", levels=256)
LABELLED = DataSpec(shape=(1, 40), kind="audio", levels=8, num_classes=3)


def make(data: DataSpec, **overrides) -> WaveNetModel:
    """A small WaveNet: 8 channels everywhere, dilations 1, 2, 4 twice (R = 16), perturbed weights."""
    cfg = {"residual_channels": 8, "dilation_channels": 8, "skip_channels": 8, "layers_per_stack": 3,
           "stacks": 2, **overrides}
    torch.manual_seed(0)
    model = WaveNetModel(build(WaveNetConfig, cfg, "test.wavenet"), data)
    perturb(model, 0.3)  # far from the initial near-uniform softmax
    return model.eval()


def random_levels(data: DataSpec, b: int, seed: int) -> torch.Tensor:
    return torch.randint(0, data.levels, (b, *data.shape), generator=seeded(seed))


# --------------------------------------------------------------------------- causality, receptive field


@pytest.mark.parametrize("kernel,layers,stacks", [(2, 3, 2), (3, 2, 2), (2, 1, 1), (2, 4, 1)])
def test_logits_see_exactly_the_receptive_field_before_them(kernel, layers, stacks):
    rf = receptive_field(kernel, layers, stacks)
    assert rf == kernel + (kernel - 1) * stacks * (2 ** layers - 1)
    torch.manual_seed(0)
    net = WaveNet(4, 4, 6, 6, 6, layers, stacks, kernel)
    perturb(net, 0.3)
    T = rf + 12
    s = torch.randint(0, 4, (3, T), generator=seeded(1))
    onehot = F.one_hot(s, 4).transpose(1, 2).float().requires_grad_(True)  # (B, K, T)
    logits = net(onehot)  # (B, L, T)
    assert torch.allclose(logits, net(s), atol=1e-6)  # the symbol path is the one-hot conv
    positions = torch.arange(T)
    for t in range(T):
        (g,) = grad(logits[:, :, t].sum(), onehot, retain_graph=True)
        seen = g.abs().sum((0, 1)) > 0  # (T,)
        expected = (positions < t) & (positions >= t - rf)  # s_{t-R} .. s_{t-1}, never s_t or later
        assert torch.equal(seen, expected), f"t={t}: sees {seen.nonzero().flatten().tolist()}"


def test_receptive_field_of_the_config():
    assert build(WaveNetConfig, {}, "m").receptive_field == 2 + 2 * 255  # defaults: 1..128 ×2
    paper = build(WaveNetConfig, {"layers_per_stack": 10, "stacks": 3}, "m")  # §2.1: 1..512 ×3
    assert paper.receptive_field == 3071
    model = WaveNetModel(build(WaveNetConfig, {"layers_per_stack": 3, "kernel": 3}, "m"), AUDIO)
    assert model.receptive_field == model.body.net.receptive_field == 3 + 2 * 2 * 7
    assert model.body.net.dilations == [1, 2, 4, 1, 2, 4]


@pytest.mark.parametrize("bad", [{"kernel": 1}, {"stacks": 0}, {"layers_per_stack": 0}, {"residual_channels": 0},
                                 {"skip_channels": -1}, {"dilation_channels": 0}, {"lr": 0.0}])
def test_bad_configs_raise(bad):
    with pytest.raises(ConfigError, match=next(iter(bad))):
        build(WaveNetConfig, bad, "x")


# --------------------------------------------------------------------------- cached generation


@pytest.mark.parametrize("overrides", [{}, {"kernel": 3, "layers_per_stack": 2}, {"conditional": True}],
                         ids=["kernel2", "kernel3", "conditional"])
@torch.no_grad()
def test_cached_generation_is_the_full_forward_pass_step_by_step(overrides):
    data = LABELLED if overrides.get("conditional") else AUDIO
    model = make(data, **overrides)
    net, body = model.body.net, model.body
    assert data.dim > 2 * net.receptive_field  # every queue wraps around several times
    labels = torch.arange(4) % 3 if model.n_classes else None
    a = model.sample(4, generator=seeded(7), condition=labels, cached=True)
    b = model.sample(4, generator=seeded(7), condition=labels, cached=False)
    assert torch.equal(a, b), "the cached and the naive sampler must draw the same sequences"
    s = body.sequence(levels_of(a, data))  # (4, T): the sampled sequence drives every path below
    assert len(set(s.flatten().tolist())) > 3  # not one symbol repeated
    full = net(s, labels)  # (4, L, T)
    fast = net.fast_generator(4, labels)
    rf = net.receptive_field
    for t in range(data.dim):
        step = fast.step(s[:, t - 1] if t else None)  # (4, L)
        torch.testing.assert_close(step, full[:, :, t], atol=1e-5, rtol=0)
        window = net(s[:, max(0, t - rf):t + 1], labels)[:, :, -1]  # the naive sampler's pass
        torch.testing.assert_close(window, full[:, :, t], atol=1e-5, rtol=0)
    assert (full[:, :, 1:] - full[:, :, :-1]).abs().max() > 0.1  # logits that move with the prefix


def test_cached_sampling_runs_no_forward_pass_and_the_naive_one_runs_one_per_step():
    model = make(AUDIO)
    calls = []
    model.body.net.register_forward_hook(lambda *_: calls.append(1))
    model.sample(2, generator=seeded(0), cached=True)
    assert calls == []  # one column per layer through the queues, never the whole net
    model.sample(2, generator=seeded(0), cached=False)
    assert len(calls) == AUDIO.dim
    assert not torch.equal(model.sample(2, generator=seeded(0)), model.sample(2, generator=seeded(1)))


def test_fast_generation_is_the_configs_default_and_can_be_turned_off():
    fast, slow = make(AUDIO), make(AUDIO, fast_generation=False)
    calls = []
    slow.body.net.register_forward_hook(lambda *_: calls.append(1))
    assert torch.equal(fast.sample(2, generator=seeded(3)), slow.sample(2, generator=seeded(3)))
    assert len(calls) == AUDIO.dim


def test_the_generator_refuses_a_missing_or_extra_previous_symbol():
    fast = make(AUDIO).body.net.fast_generator(2)
    with pytest.raises(ValueError, match="step 0"):
        fast.step(torch.zeros(2, dtype=torch.long))
    fast.step(None)
    with pytest.raises(ValueError, match="step 1"):
        fast.step(None)


# --------------------------------------------------------------------------- μ-law (gm.data.audio)


def test_mu_law_levels_round_trip_and_the_waveform_error_is_within_half_a_step():
    v = np.arange(256)
    assert np.array_equal(mu_law_encode(mu_law_decode(v)), v)
    assert torch.equal(mu_law_encode(mu_law_decode(torch.arange(256))), torch.arange(256))
    # Encoding rounds f(x) onto a grid of step 2/μ, so |f(x̂) - f(x)| <= 1/μ; f⁻¹'(y) = ln(1+μ)(1+μ)^|y|/μ
    # grows with |y|, so |x̂ - x| <= (1/μ)·f⁻¹'(|f(x)| + 1/μ) = ln(1+μ)(1 + μ|x|)(1+μ)^(1/μ) / μ².
    x = np.linspace(-1, 1, 200_001)
    err = np.abs(mu_law_decode(mu_law_encode(x)).astype(np.float64) - x)
    bound = math.log1p(MU) * (1 + MU * np.abs(x)) * (1 + MU) ** (1 / MU) / MU ** 2
    assert (err <= bound + 1e-6).all()  # float32 decode: 1e-6 of slack
    assert (err / bound).max() > 0.9  # and the bound is nearly attained: no loose check
    assert bound.max() == pytest.approx(0.0223, abs=1e-4) and bound.min() == pytest.approx(8.7e-5, abs=1e-6)


def test_mu_law_compand_and_expand_are_monotone_inverses():
    x = np.linspace(-1, 1, 10_001)
    y = mu_law_compand(x)
    assert np.abs(mu_law_expand(y) - x).max() < 1e-6 and np.abs(mu_law_compand(mu_law_expand(x)) - x).max() < 1e-6
    assert (np.diff(y) > 0).all() and y[0] == -1 and y[-1] == 1 and y[5000] == 0
    assert mu_law_compand(0.5) == pytest.approx(math.log1p(MU * 0.5) / math.log1p(MU))  # Eq. 2 by hand
    xt = torch.linspace(-1, 1, 10_001, dtype=torch.float64)
    assert (mu_law_expand(mu_law_compand(xt)) - xt).abs().max() < 1e-6
    assert (torch.diff(mu_law_compand(xt)) > 0).all()
    levels = mu_law_encode(x)
    assert levels.min() == 0 and levels.max() == 255 and (np.diff(levels) >= 0).all()


# --------------------------------------------------------------------------- global conditioning


@torch.no_grad()
def test_the_label_changes_the_logits_at_every_step_including_the_first():
    model = make(LABELLED, conditional=True)
    net = model.body.net
    s = model.body.sequence(random_levels(LABELLED, 2, seed=0))
    by_label = torch.stack([net(s, torch.full((2,), y)) for y in range(3)])  # (3, B, L, T)
    for a, b in [(0, 1), (1, 2), (0, 2)]:
        assert (by_label[a] - by_label[b]).abs().amax((0, 1)).min() > 1e-3  # every t, t = 0 included
    fast = [net.fast_generator(2, torch.full((2,), y)).step(None) for y in range(2)]  # t = 0 through the queues
    assert (fast[0] - fast[1]).abs().max() > 1e-3
    torch.testing.assert_close(fast[0], by_label[0, :, :, 0], atol=1e-5, rtol=0)
    x = LABELLED.to_model(random_levels(LABELLED, 4, seed=1), generator=seeded(2))
    per_class = torch.stack([model.log_prob(x, torch.full((4,), y)) for y in range(3)])  # (3, B)
    assert torch.allclose(model.log_prob(x), torch.logsumexp(per_class, 0) - math.log(3), atol=1e-4)
    y0, y1 = torch.zeros(3, dtype=torch.long), torch.ones(3, dtype=torch.long)
    assert not torch.equal(model.sample(3, seeded(4), condition=y0), model.sample(3, seeded(4), condition=y1))
    with pytest.raises(ValueError, match="conditional"):
        model.sample(3, seeded(4))


# --------------------------------------------------------------------------- normalisation, sampling, order


def every_sequence(data: DataSpec) -> torch.Tensor:
    return torch.cartesian_prod(*[torch.arange(data.levels)] * data.dim).view(-1, *data.shape)


@pytest.mark.parametrize("data,conditional", [
    (DataSpec((1, 3), "audio", levels=4), False),
    (DataSpec((1, 3), "audio", levels=4, num_classes=2), True),
    (DataSpec((2, 1, 2), "image", levels=3), False),  # two channels, 81 images
], ids=["audio", "audio-conditional", "two-channel-image"])
@torch.no_grad()
def test_probabilities_of_every_sequence_sum_to_one(data, conditional):
    model = make(data, conditional=conditional, stacks=1, layers_per_stack=2)
    v = every_sequence(data)
    for y in range(data.num_classes or 1):
        labels = torch.full((len(v),), y) if conditional else None
        log_p = model.log_prob(bin_centres(v, data), labels) - data.dim * math.log(data.scale)
        assert log_p.exp().sum().item() == pytest.approx(1.0, abs=1e-5)
        assert log_p.max() - log_p.min() > 1.0, "the perturbed model should be far from uniform"


@torch.no_grad()
def test_samples_follow_log_prob_and_log_prob_ignores_dequantization():
    data = DataSpec((1, 2), "audio", levels=3)
    model = make(data, stacks=1, layers_per_stack=1)
    v = every_sequence(data)  # (9, 1, 2)
    p = (model.log_prob(bin_centres(v, data)) - data.dim * math.log(data.scale)).exp()
    assert p.max() > 0.2
    x = data.to_model(v, generator=seeded(1))
    assert torch.allclose(model.log_prob(x), model.log_prob(bin_centres(v, data)))
    n = 4000
    draws = levels_of(model.sample(n, generator=seeded(0)), data).flatten(1)  # (n, 2)
    freq = torch.bincount(draws[:, 0] * 3 + draws[:, 1], minlength=9).float() / n
    assert ((freq - p).abs() <= 4 * (p * (1 - p) / n).sqrt() + 2e-3).all(), (freq, p)


def test_loss_is_the_mean_nll_and_bits_per_sample_by_hand():
    model = make(AUDIO).train()
    v = random_levels(AUDIO, 3, seed=0)
    x = AUDIO.to_model(v, generator=seeded(1))
    out = model.loss(Batch(x), "ar")
    with torch.no_grad():
        logp = F.log_softmax(model.body.net(v.flatten(1)), dim=1)  # (B, 256, T)
        log_mass = logp.gather(1, v.flatten(1).unsqueeze(1)).sum((1, 2))  # log P(v) per row, nats
    assert out.logs["bits_per_dim"] == pytest.approx((-log_mass.mean() / (AUDIO.dim * math.log(2))).item(), rel=1e-5)
    assert out.loss.item() == pytest.approx((-log_mass.mean() - AUDIO.dim * math.log(128)).item(), rel=1e-5)


def test_an_image_is_one_sequence_in_raster_order_with_a_pixels_channels_together():
    data = DataSpec((2, 2, 3), "image", levels=5)
    model = make(data, stacks=1, layers_per_stack=1)
    v = random_levels(data, 2, seed=0)  # (B, C, H, W)
    s = model.body.sequence(v)
    for b in range(2):
        for c in range(2):
            for h in range(2):
                for w in range(3):
                    assert s[b, (h * 3 + w) * 2 + c] == c * 5 + v[b, c, h, w]
    assert torch.equal(model.body.unsequence(s - model.body.offsets), v)
    assert model.body.net.n_symbols == 10 and model.body.net.n_levels == 5


def test_continuous_vectors_use_the_made_fallback():
    model = WaveNetModel(build(WaveNetConfig, {"hidden": 16}, "m"), DataSpec((2,), "toy"))
    assert type(model.body).__name__ == "MADEMixture"
    assert model.sample(3, generator=seeded(0)).shape == (3, 2)


def test_the_generation_table_puts_cached_and_naive_side_by_side():
    rows = [{"length": 2048, "batch": 1, "cached_per_s": 1500.0, "naive_per_s": 50.0},
            {"length": 8000, "batch": 1, "cached_per_s": 1400.0, "naive_per_s": None}]
    text = format_generation_table(rows).splitlines()
    assert text[2].split() == ["2048", "1", "1500.0", "50.0", "30.0"]
    assert text[3].split() == ["8000", "1", "1400.0", "-", "-"]
    assert parse_overrides("layers_per_stack=10, fast_generation=False,lr=3e-4") == {
        "layers_per_stack": 10, "fast_generation": False, "lr": 3e-4}
