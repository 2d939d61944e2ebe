"""VQ-VAE-2: both priors' causality by autograd (and a broken mask caught), their normalisation by
enumeration, the two-level grids, Alg. 2's sampling order, the bound and the loss by hand, each
level's EMA update against App. A.1's formulas, and training/saving on a digits-shaped batch."""

from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch

import gm.models  # noqa: F401  (fills the registry)
from gm.core.config import ConfigError, build
from gm.data.dataspec import DataSpec
from gm.models.base import load_model, save_model
from gm.models.vqvae import conv_decoder, perplexity
from gm.models.vqvae2 import VQVAE2, VQVAE2Config
from gm.nn.mlp import clamp_to_model_space
from gm.nn.pixelcnn import PixelCNN
from gm.nn.vq_priors import AttentionPixelCNN, ConditionedPixelCNN, attention_slots
from tests.helpers import DIGITS, SMALL_IMAGE, TOY, perturb, seeded
from tests.test_vqvae import assert_trained_model_scores_and_samples, digits_batch

SHAPES32 = DataSpec(shape=(3, 32, 32), kind="image", levels=256, num_classes=4)
SHAPES16 = DataSpec(shape=(3, 16, 16), kind="image", levels=256)
TINY = {"hidden": 16, "depth": 1, "code_dim": 4, "codebook_size_top": 8, "codebook_size_bottom": 16,
        "prior_hidden": 8, "prior_blocks": 1, "attention_heads": 2, "cond_blocks": 1}


def vqvae2(data: DataSpec = DIGITS, **overrides) -> VQVAE2:
    torch.manual_seed(0)
    return VQVAE2(build(VQVAE2Config, {**TINY, **overrides}, "test"), data)


def raster(h: int, w: int) -> torch.Tensor:
    return torch.arange(h * w).view(h, w)


def dependence(logits_at, inputs: torch.Tensor, h: int, w: int) -> dict[tuple[int, int], torch.Tensor]:
    """For each position (r, c): the (H', W') map of which positions of `inputs` (1, K, H', W') the
    logits at (r, c) have a nonzero gradient from."""
    out = {}
    for r, c in itertools.product(range(h), range(w)):
        (grad,) = torch.autograd.grad(logits_at(r, c), inputs, retain_graph=True)
        out[r, c] = grad[0].abs().sum(0) > 0
    return out


# --------------------------------------------------------------------------- the top prior


def top_prior_dependence(net: AttentionPixelCNN, h: int = 4, w: int = 5):
    torch.manual_seed(1)
    s = torch.rand(1, net.n_symbols, h, w, requires_grad=True)  # soft codes, so gradients exist
    logits = net(s)
    return dependence(lambda r, c: logits[0, :, r, c].sum(), s, h, w)


def test_top_prior_is_causal_and_its_attention_sees_every_earlier_code():
    torch.manual_seed(0)
    net = AttentionPixelCNN(n_symbols=4, channels=8, n_blocks=2, kernel_size=3, n_attention=2, heads=2)
    order = raster(4, 5)
    for (r, c), touched in top_prior_dependence(net).items():
        i = order[r, c]
        assert not touched[order >= i].any(), f"top code {(r, c)} sees its own or a later code"
        # Attention reads every earlier code: no blind spot, even right after a row wrap.
        assert touched[order < i].all(), f"top code {(r, c)} misses an earlier code"
    # The plain PixelCNN of the same sizes has a blind spot: the first code of row 1 cannot see the
    # last of row 0. So it is the attention that gives the full view above.
    torch.manual_seed(0)
    plain = PixelCNN(4, 8, 2, 3)
    x = torch.rand(1, 4, 4, 5, requires_grad=True)
    (grad,) = torch.autograd.grad(plain(x)[0, :, 1, 0].sum(), x)
    assert grad[0, :, 0, 4].abs().sum() == 0


def test_a_non_causal_attention_is_caught():
    torch.manual_seed(0)
    net = AttentionPixelCNN(n_symbols=4, channels=8, n_blocks=2, kernel_size=3, n_attention=1, heads=2)
    for layer in net.attention:
        layer.causal = False  # the mask removed
    order = raster(4, 5)
    seen = top_prior_dependence(net)
    leaks = [(r, c) for (r, c), touched in seen.items() if touched[order >= order[r, c]].any()]
    # Every position whose logits read any code now reads later ones (or its own) too; the exception,
    # if any, is a position whose head ReLUs are all off for this input.
    assert leaks == [pos for pos, touched in seen.items() if touched.any()] and len(leaks) >= 18, leaks


def test_attention_slots_interleave():
    assert attention_slots(4, 2) == [1, 3]
    assert attention_slots(4, 1) == [3]
    assert attention_slots(3, 3) == [0, 1, 2]
    assert attention_slots(2, 0) == []
    with pytest.raises(ValueError, match="attention"):
        attention_slots(1, 2)


# --------------------------------------------------------------------------- the bottom prior


def test_bottom_prior_is_causal_over_bottom_codes_and_sees_every_top_code():
    model = vqvae2(prior_hidden=8, prior_blocks=2)  # digits: bottom 4×4, top 2×2
    net = model.prior_bottom
    assert (model.grid_bottom, model.grid_top) == ((4, 4), (2, 2))
    torch.manual_seed(1)
    s = torch.rand(1, 16, 4, 4, requires_grad=True)  # soft bottom codes
    t = torch.rand(1, 8, 2, 2, requires_grad=True)  # soft top codes
    logits = net(s, t)
    order = raster(4, 4)
    on_bottom = dependence(lambda r, c: logits[0, :, r, c].sum(), s, 4, 4)
    on_top = dependence(lambda r, c: logits[0, :, r, c].sum(), t, 4, 4)
    for (r, c), touched in on_bottom.items():
        i = order[r, c]
        assert not touched[order >= i].any(), f"bottom code {(r, c)} sees its own or a later bottom code"
        assert touched[order < i].all()  # a 7×7 first kernel on a 4-wide grid: no blind spot
        assert on_top[r, c].all(), f"bottom code {(r, c)} ignores some top code"  # fully visible, even at (0, 0)


def test_a_broken_bottom_mask_is_caught():
    model = vqvae2()
    net = model.prior_bottom
    net.first.mask.fill_(1.0)  # the mask-A first layer made fully visible
    s = torch.rand(1, 16, 4, 4, requires_grad=True)
    logits = net(s, torch.zeros(1, 2, 2, dtype=torch.long))
    (grad,) = torch.autograd.grad(logits[0, :, 0, 0].sum(), s)
    assert grad[0].abs().sum(0)[0, 0] > 0  # the probe above would fail on this net


def test_bottom_prior_needs_the_top_codes():
    model = vqvae2()
    with pytest.raises(ValueError, match="top codes"):
        model.prior_bottom(torch.zeros(1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="unconditional"):
        model.prior_top(torch.zeros(1, 2, 2, dtype=torch.long), torch.zeros(1, dtype=torch.long))


# --------------------------------------------------------------------------- normalisation


def test_top_prior_sums_to_one_over_all_code_grids():
    torch.manual_seed(0)
    net = AttentionPixelCNN(n_symbols=3, channels=8, n_blocks=1, kernel_size=3, n_attention=1, heads=2)
    perturb(net, 0.5)
    for h, w in [(1, 2), (2, 2)]:
        grids = torch.tensor(list(itertools.product(range(3), repeat=h * w))).view(-1, h, w)  # all 3^(h·w)
        with torch.no_grad():
            p = net.log_prob(grids).double().exp()
        assert p.sum().item() == pytest.approx(1.0, abs=1e-5)
        assert p.max() > 2 * p.min()  # far from uniform, so a leaky model would not sum to one by luck


@pytest.mark.parametrize("data,overrides,n_top,n_bottom", [
    (TOY, {"mlp_codes": 2, "mlp_top_codes": 1}, 1, 2),  # 2 bottom codes in a 1×2 grid, one top code
    (SMALL_IMAGE, {"downsample": 1}, 1, 4),  # 4×4 images: bottom 2×2, top 1×1
])
def test_both_priors_together_sum_to_one(data, overrides, n_top, n_bottom):
    model = vqvae2(data, codebook_size_top=2, codebook_size_bottom=3, **overrides).eval()
    perturb(model, 0.3)
    assert math.prod(model.grid_top) == n_top and math.prod(model.grid_bottom) == n_bottom
    tops = torch.tensor(list(itertools.product(range(2), repeat=n_top))).view(-1, *model.grid_top)
    bottoms = torch.tensor(list(itertools.product(range(3), repeat=n_bottom))).view(-1, *model.grid_bottom)
    with torch.no_grad():
        for top in tops:  # p(bottom | top) is normalised for each top map
            cond = model.prior_bottom.log_prob(bottoms, top.expand(len(bottoms), *top.shape)).double().exp()
            assert cond.sum().item() == pytest.approx(1.0, abs=1e-5)
        t = tops.repeat_interleave(len(bottoms), 0)
        b = bottoms.repeat(len(tops), 1, 1)
        joint = model.prior_log_prob(t, b).double().exp()  # every (top, bottom) pair
    assert joint.sum().item() == pytest.approx(1.0, abs=1e-5)


# --------------------------------------------------------------------------- grids, sampling


@pytest.mark.parametrize("data,overrides,bottom,top", [
    (SHAPES32, {}, (8, 8), (4, 4)),  # §3.1: 4× down, then 2× more
    (SHAPES16, {}, (4, 4), (2, 2)),
    (DIGITS, {}, (4, 4), (2, 2)),  # the fallback: one halving on 8×8
    (SHAPES32, {"downsample": 1}, (16, 16), (8, 8)),
    (TOY, {}, (1, 2), (1, 1)),
    (DIGITS, {"arch": "mlp", "mlp_codes": 3, "mlp_top_codes": 2}, (1, 3), (1, 2)),
])
def test_code_grids(data, overrides, bottom, top):
    model = vqvae2(data, **overrides)
    assert (model.grid_bottom, model.grid_top) == (bottom, top)
    g = seeded(0)
    x = torch.rand(3, *data.shape, generator=g) * 2 - 1
    enc = model.encode(x)
    assert enc.z_top.shape == enc.e_top.shape == (3, 4, *top)
    assert enc.z_bottom.shape == enc.e_bottom.shape == (3, 4, *bottom)
    top_codes, bottom_codes = model.codes(x)
    assert top_codes.shape == (3, *top) and bottom_codes.shape == (3, *bottom)
    assert model.reconstruct(x).shape == x.shape
    assert model.log_prob(x).shape == (3,)


def test_configs_are_checked():
    with pytest.raises(ConfigError, match="arch"):
        vqvae2(TOY, arch="conv")
    with pytest.raises(ConfigError, match="downsample"):
        vqvae2(SHAPES16, downsample=4)  # 16 cannot be halved 5 times
    with pytest.raises(ConfigError, match="downsample"):
        vqvae2(DIGITS, downsample=3)  # 8×8: no room for a top level below 1×1
    with pytest.raises(ConfigError, match="downsample"):
        build(VQVAE2Config, {"downsample": 0}, "x")
    with pytest.raises(ConfigError, match="top_attention"):
        build(VQVAE2Config, {"prior_blocks": 1, "top_attention": 2}, "x")
    with pytest.raises(ConfigError, match="attention_heads"):
        build(VQVAE2Config, {"prior_hidden": 10, "attention_heads": 4}, "x")
    with pytest.raises(ConfigError, match="mlp_top_codes"):
        build(VQVAE2Config, {"mlp_codes": 2, "mlp_top_codes": 3}, "x")
    with pytest.raises(ConfigError, match="prior_kernel"):
        build(VQVAE2Config, {"prior_kernel": 4}, "x")
    with pytest.raises(ConfigError, match="codebook_size"):
        build(VQVAE2Config, {"codebook_size": 64}, "x")  # one size per level
    c = VQVAE2Config()
    assert (c.beta, c.ema_decay, c.codebook, c.codebook_size) == (0.25, 0.99, "ema", 128)


def test_sampling_is_top_then_bottom_given_top_then_decode():
    model = vqvae2(SHAPES32, hidden=8, code_dim=4).eval()
    perturb(model, 0.3)
    a = model.sample(3, generator=seeded(0))
    assert a.shape == (3, 3, 32, 32) and a.min() >= -1 and a.max() < 1  # model space
    assert torch.equal(a, model.sample(3, generator=seeded(0)))
    assert not torch.equal(a, model.sample(3, generator=seeded(1)))
    # Alg. 2 by hand, on one generator: top codes, bottom codes given them, decode, observation noise.
    g = seeded(0)
    with torch.no_grad():
        top = model.prior_top.sample(3, 4, 4, generator=g)
        bottom = model.prior_bottom.sample(3, 8, 8, generator=g, labels=top)
        params = model.decode(model.bottom.codebook[bottom].permute(0, 3, 1, 2),
                              model.top.codebook[top].permute(0, 3, 1, 2))
        x = clamp_to_model_space(model.obs.sample(params, g), SHAPES32).view(3, 3, 32, 32)
    torch.testing.assert_close(a, x)


# --------------------------------------------------------------------------- the bound and the loss


def brute_force(model: VQVAE2, x: torch.Tensor):
    """Alg. 1's forward by hand from the model's nets, nearest codes by brute force."""
    def nearest(z, codebook):  # (B, D, h, w), (K, D) -> codes (B, h, w), vectors (B, D, h, w)
        codes = ((z.permute(0, 2, 3, 1).unsqueeze(-2) - codebook) ** 2).sum(-1).argmin(-1)
        return codes, codebook[codes].permute(0, 3, 1, 2)

    h_b = model.encoder_bottom(x)
    z_t = model.encoder_top(h_b)
    top, e_t = nearest(z_t, model.top.codebook)
    z_b = model.mix_bottom(torch.cat([h_b, model.decoder_top(e_t)], 1))
    bottom, e_b = nearest(z_b, model.bottom.codebook)
    return z_t, top, e_t, z_b, bottom, e_b


def test_log_prob_is_decoder_likelihood_plus_both_priors_by_hand():
    model = vqvae2(decoder="categorical").eval()
    perturb(model, 0.2)
    x = digits_batch(5).x
    with torch.no_grad():
        _, top, e_t, _, bottom, e_b = brute_force(model, x)
        out = model.decoder(torch.cat([e_b, model.upsample_top(e_t)], 1))  # (B, C·L, 8, 8), channel-major
        logits = out.view(5, 1, 17, 8, 8).permute(0, 1, 3, 4, 2).reshape(5, 64, 17)
        top_logits = model.prior_top(top)  # (B, K_t, 2, 2)
        bottom_logits = model.prior_bottom(bottom, top)  # (B, K_b, 4, 4)
    v = torch.floor((x.flatten(1) + 1) * 17 / 2).long()  # each pixel's level
    # log P(level) of the categorical head plus 64·log(L/2), the density of a level's bin in model space
    log_px = torch.log_softmax(logits.double(), -1).gather(-1, v.unsqueeze(-1)).sum((1, 2)) + 64 * math.log(8.5)
    log_top = torch.log_softmax(top_logits.double(), 1).gather(1, top.unsqueeze(1)).sum((1, 2, 3))
    log_bottom = torch.log_softmax(bottom_logits.double(), 1).gather(1, bottom.unsqueeze(1)).sum((1, 2, 3))
    assert log_top.abs().min() > 0 and log_bottom.abs().min() > 0
    torch.testing.assert_close(model.log_prob(x).double(), log_px + log_top + log_bottom, rtol=1e-5, atol=1e-4)


def test_loss_is_reconstruction_plus_both_commitments():
    model = vqvae2(beta=0.7, data_init=False)
    perturb(model, 0.2)
    batch = digits_batch()
    out = model.loss(batch, "vqvae2")
    with torch.no_grad():
        z_t, top, e_t, z_b, bottom, e_b = brute_force(model, batch.x)
        mean = model.decode(e_b, e_t).double()  # the straight-through forward values are the code vectors
    s = model.obs.log_std.detach().double().exp()
    recon = (0.5 * ((batch.x.flatten(1).double() - mean) / s) ** 2 + s.log()
             + 0.5 * math.log(2 * math.pi)).sum(1).mean().item()
    commit_top = 0.7 * (z_t - e_t).pow(2).sum(1).mean().item()  # β · mean over the top latents of ‖z - e‖²
    commit_bottom = 0.7 * (z_b - e_b).pow(2).sum(1).mean().item()
    assert out.logs["recon"] == pytest.approx(recon, rel=1e-5)
    assert out.logs["commitment_top"] == pytest.approx(commit_top, rel=1e-5)
    assert out.logs["commitment_bottom"] == pytest.approx(commit_bottom, rel=1e-5)
    assert out.loss.item() == pytest.approx(recon + commit_top + commit_bottom, rel=1e-5)
    assert out.logs["perplexity_top"] == pytest.approx(perplexity(top, 8).item())
    assert out.logs["perplexity_bottom"] == pytest.approx(perplexity(bottom, 16).item())


def test_straight_through_reaches_both_encoders():
    model = vqvae2(beta=0.0)  # no commitment: only the straight-through gradients reach the encoders
    model.loss(digits_batch(), "vqvae2").loss.backward()
    for net in (model.encoder_bottom, model.encoder_top):
        assert sum(p.grad.abs().sum() for p in net.parameters()) > 0


# --------------------------------------------------------------------------- codebooks


def test_ema_update_of_each_level_against_the_formulas():
    decay, eps = 0.9, 1e-3
    model = vqvae2(ema_decay=decay, ema_eps=eps)
    batch = digits_batch()
    model.loss(batch, "vqvae2")  # sets both codebooks from the batch's encodings
    model.after_step("vqvae2")
    before = {lvl: (getattr(model, lvl).ema_count.clone(), getattr(model, lvl).ema_sum.clone())
              for lvl in ("top", "bottom")}
    model.loss(batch, "vqvae2")
    with torch.no_grad():
        z_t, top, _, z_b, bottom, _ = brute_force(model, batch.x)
    model.after_step("vqvae2")
    for level, z, codes in (("top", z_t, top), ("bottom", z_b, bottom)):
        book = getattr(model, level)
        count, total = before[level]
        flat, idx = z.permute(0, 2, 3, 1).reshape(-1, 4).double(), codes.flatten()
        n = torch.stack([(idx == i).sum() for i in range(book.k)]).double()  # n_i
        sums = torch.stack([flat[idx == i].sum(0) for i in range(book.k)])  # Σ_j z_ij
        new_count = decay * count.double() + (1 - decay) * n  # N_i <- γ N_i + (1-γ) n_i   (Eq. 6)
        new_total = decay * total.double() + (1 - decay) * sums  # m_i <- γ m_i + (1-γ) Σ_j z_ij   (Eq. 7)
        smoothed = (new_count + eps) / (new_count.sum() + book.k * eps) * new_count.sum()
        torch.testing.assert_close(book.ema_count.double(), new_count, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(book.ema_sum.double(), new_total, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(book.codebook.double(), new_total / smoothed.unsqueeze(1),  # e_i = m_i / N_i (Eq. 8)
                                   rtol=1e-5, atol=1e-6)
        assert n.sum() == codes.numel() and (n > 0).sum() > 1
    assert int(model.steps) == 2


def test_perplexities_per_level_and_pooled():
    model = vqvae2()
    x = digits_batch().x
    model.loss(digits_batch(), "vqvae2")  # data-initialised codebooks: many codes in use
    top, bottom = model.codes(x)
    levels = model.level_perplexities(x)

    def by_hand(codes, k):
        p = torch.bincount(codes.flatten(), minlength=k).double() / codes.numel()
        p = p[p > 0]
        return math.exp(-(p * p.log()).sum().item())

    assert levels["top"] == pytest.approx(by_hand(top, 8))
    assert levels["bottom"] == pytest.approx(by_hand(bottom, 16))
    pooled = by_hand(torch.cat([top.flatten(), bottom.flatten() + 8]), 24)
    assert model.codebook_perplexity(x) == pytest.approx(pooled)
    assert max(levels.values()) <= pooled <= 24
    assert levels["top"] > 1 and levels["bottom"] > 1

    # The evaluation's codebook metric reports both levels beside the pooled figure; VQ-VAE has one level.
    from gm.evaluation import ModelSampler
    from gm.metrics.autoencoding import codebook_perplexity

    data_x = DIGITS.to_data(x).numpy()
    got = codebook_perplexity(ModelSampler(model.eval()), data_x, seed=0)
    assert set(got) == {"codebook_perplexity", "codebook_perplexity_top", "codebook_perplexity_bottom"}
    assert got["codebook_perplexity_top"] > 1 and got["codebook_perplexity_bottom"] > 1
    from gm.models.vqvae import VQVAE, VQVAEConfig
    single = VQVAE(build(VQVAEConfig, {"codebook_size": 8, "prior_hidden": 8, "prior_blocks": 1}, "m"), DIGITS)
    assert set(codebook_perplexity(ModelSampler(single.eval()), data_x, seed=0)) == {"codebook_perplexity"}


# --------------------------------------------------------------------------- training, saving


@pytest.mark.parametrize("codebook,decoder", [("ema", "logistic"), ("loss", "categorical")])
def test_trains_on_digits(codebook, decoder):
    # As the paper: the autoencoder first (the priors wait `prior_start` steps), then the priors on its codes.
    model = vqvae2(codebook=codebook, decoder=decoder, hidden=32, prior_hidden=16, lr=3e-3, prior_lr=3e-3,
                   prior_start=40)
    groups = model.step_groups()
    assert [g.name for g in groups] == ["vqvae2", "prior_top", "prior_bottom"]
    if codebook == "loss":  # the codebooks are parameters of the autoencoder's group
        own = {id(p) for p in groups[0].params}
        assert id(model.top.codebook) in own and id(model.bottom.codebook) in own
    opts = [g.make_optimizer() for g in groups]
    untrained = {name: copy.deepcopy(getattr(model, name)) for name in ("prior_top", "prior_bottom")}
    batch = digits_batch(64)
    first = model.loss(batch, "vqvae2").logs
    for step in range(70):
        for group, opt in zip(groups, opts):
            if step >= 40 and group.name == "vqvae2":
                continue
            out = model.loss(batch, group.name)
            if group.name != "vqvae2":  # active from the iteration whose autoencoder step is the 40th
                assert out.logs["prior_active"] == float(step >= 39)
            opt.zero_grad()
            out.loss.backward()
            opt.step()
            model.after_step(group.name)
    logs = model.loss(batch, "vqvae2").logs
    assert logs["recon"] < first["recon"] - 20, (first, logs)  # nats per image
    assert logs["perplexity_top"] > 1.5 and logs["perplexity_bottom"] > 1.5, logs
    top, bottom = model.codes(batch.x)
    with torch.no_grad():
        for name, args in (("prior_top", (top,)), ("prior_bottom", (bottom, top))):
            trained, before = getattr(model, name).log_prob(*args).mean(), untrained[name].log_prob(*args).mean()
            assert trained > before + 1.0, (name, trained, before)  # nats per image
    assert_trained_model_scores_and_samples(model, batch)


def test_priors_wait_for_prior_start_and_save_load_keeps_the_schedule(tmp_path):
    model = vqvae2(prior_start=3)
    batch = digits_batch()
    for level in ("prior_top", "prior_bottom"):
        out = model.loss(batch, level)
        out.loss.backward()
        assert out.loss.item() == 0.0 and out.logs["prior_active"] == 0.0
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())
    opt = model.step_groups()[0].make_optimizer()
    for _ in range(2):
        out = model.loss(batch, "vqvae2")
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        model.after_step("vqvae2")
        model.after_step("prior_top")  # prior steps do not count
    assert int(model.steps) == 2
    loaded = load_model(save_model(model, tmp_path / "m"))
    assert int(loaded.steps) == 2 and bool(loaded.top.ready) and bool(loaded.bottom.ready)
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    loaded.train()
    assert loaded.loss(batch, "prior_top").logs["prior_active"] == 0.0
    loaded.loss(batch, "vqvae2")
    loaded.after_step("vqvae2")
    for level in ("prior_top", "prior_bottom"):
        out = loaded.loss(batch, level)
        assert out.logs["prior_active"] == 1.0 and out.loss.item() > 0


def test_mlp_conditioning_stack_maps_top_to_bottom_grid():
    model = vqvae2(TOY, mlp_codes=3, mlp_top_codes=2)
    cond = model.prior_bottom.condition(torch.zeros(4, 1, 2, dtype=torch.long))
    assert cond.shape == (4, 8, 1, 3)
    with pytest.raises(ValueError, match="conditioning stack"):
        ConditionedPixelCNN(4, 3, conv_decoder(8, 8, 8, 2, 1), 8, 1, 3)(
            torch.zeros(1, 4, 4, dtype=torch.long), torch.zeros(1, 2, 2, dtype=torch.long))  # 2×2 -> 8×8 ≠ 4×4
