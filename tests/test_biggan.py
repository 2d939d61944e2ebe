"""BigGAN (Brock et al. 2019): the projection critic, class-conditional batch norm from the shared embedding,
the hierarchical latent, orthogonal regularisation in the generator's loss, the truncation trick and a few
real steps on labelled digits."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from gm.core.config import ConfigError, build
from gm.data.dataspec import DataSpec
from gm.models.biggan import BigGAN
from gm.nn.biggan import BigGANGenerator, GBlock, z_chunks
from gm.nn.scaled import ProjectionHead
from tests.helpers import DIGITS, TOY, make_batch, seeded, train_steps

IMAGE32 = DataSpec(shape=(1, 32, 32), kind="image", num_classes=10, levels=17)


def biggan(data: DataSpec = DIGITS, **overrides):
    torch.manual_seed(0)
    # ema 0: these tests are about the live generator's maths (tests/test_ema.py has the EMA's own)
    return BigGAN(build(BigGAN.config_cls, {"hidden": 8, "ema": 0, **overrides}, "test.biggan"), data)


def raw(m: nn.Module) -> torch.Tensor:
    return m.parametrizations.weight.original if parametrize.is_parametrized(m, "weight") else m.weight


def test_paper_settings():
    model = biggan()
    groups = {g.name: g for g in model.step_groups()}
    assert (groups["critic"].lr, groups["gen"].lr, groups["critic"].repeats) == (2e-4, 5e-5, 2)
    assert model.config.betas == (0.0, 0.999) and model.config.ortho_beta == 1e-4
    assert not model.capabilities.conditional  # gm's rule: every family's default is unconditional
    weighted = [m for net in (model.gen, model.critic) for m in net.modules()
                if isinstance(m, (nn.Linear, nn.Conv2d))]
    assert weighted and all(parametrize.is_parametrized(m, "weight") for m in weighted)


def test_the_projection_critic_is_its_formula():
    model = biggan(conditional=True).eval()  # eval: no power iteration between the reads
    batch = make_batch(DIGITS, 6)
    out, phi = model.critic_forward(batch.x, batch.y)
    head = model.critic.head
    assert isinstance(head, ProjectionHead) and parametrize.is_parametrized(head.embed, "weight")
    torch.testing.assert_close(phi, model.critic.body(batch.x))
    by_hand = phi @ head.psi.weight.t() + head.psi.bias + (head.embed.weight[batch.y] * phi).sum(1, keepdim=True)
    torch.testing.assert_close(out, by_hand)
    other, _ = model.critic_forward(batch.x, (batch.y + 1) % 10)
    assert not torch.allclose(out, other)  # the class enters the logit
    plain = biggan().eval()  # unconditional: a plain linear head, no label
    assert isinstance(plain.critic.head, nn.Linear)
    out, phi = plain.critic_forward(batch.x)
    torch.testing.assert_close(out, phi @ plain.critic.head.weight.t() + plain.critic.head.bias)


def test_conditional_batch_norm_uses_the_class():
    model = biggan(conditional=True)
    three, four = torch.full((6,), 3), torch.full((6,), 4)
    a = model.sample(6, seeded(0), condition=three)
    assert not torch.equal(a, model.sample(6, seeded(0), condition=four))  # same z, another class
    # The class enters only through the shared embedding: zeroed, both classes give the same samples,
    with torch.no_grad():
        model.gen.shared.weight.zero_()
    torch.testing.assert_close(model.sample(6, seeded(0), condition=three), model.sample(6, seeded(0), condition=four))
    # and a block's batch norm with a zero conditioning vector is the plain (affine-free) batch norm.
    block = model.gen.blocks[0]
    x = torch.randn(6, block.bn1.bn.num_features, 4, 4)
    c = torch.cat([model.gen.shared(three), torch.zeros(6, model.gen.chunks[1])], dim=1)
    torch.testing.assert_close(block.bn1(x, c), F.batch_norm(x, None, None, training=True, eps=1e-5))


@pytest.mark.parametrize("conditional", [False, True])
def test_each_block_receives_its_own_chunk_of_z(conditional):
    torch.manual_seed(0)
    gen = BigGANGenerator(12, (1, 32, 32), 8, 16, num_classes=10 if conditional else 0, shared_dim=5)
    assert gen.chunks == z_chunks(12, 3) == [3, 3, 3, 3]
    seen = {}
    hooks = [gen.linear.register_forward_pre_hook(lambda m, args: seen.__setitem__("linear", args[0]))]
    for i, block in enumerate(gen.blocks):
        hooks.append(block.register_forward_pre_hook(lambda m, args, i=i: seen.__setitem__(i, args[1])))
    z, y = torch.randn(4, 12), (torch.tensor([0, 1, 2, 9]) if conditional else None)
    assert gen(z, y).shape == (4, 1, 32, 32)
    for h in hooks:
        h.remove()
    torch.testing.assert_close(seen["linear"], z[:, :3])
    for i in range(3):
        chunk = z[:, 3 * (i + 1):3 * (i + 2)]
        if conditional:
            torch.testing.assert_close(seen[i], torch.cat([gen.shared(y), chunk], dim=1))
        else:
            torch.testing.assert_close(seen[i], chunk)
    assert all(isinstance(b, GBlock) for b in gen.blocks)
    assert z_chunks(10, 3) == [3, 3, 2, 2]
    with pytest.raises(ValueError, match="z_dim: expected at least 4"):
        z_chunks(3, 3)


def test_the_orthogonal_penalty_is_in_the_generator_loss():
    batch = make_batch(DIGITS, 8)
    with_beta, without = biggan(conditional=True), biggan(conditional=True, ortho_beta=0.0)
    torch.manual_seed(5)
    a = with_beta.loss(batch, "gen")
    torch.manual_seed(5)
    b = without.loss(batch, "gen")
    closed = 0.0
    for m in with_beta.gen.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            w = raw(m).detach().flatten(1).double()
            gram = w @ w.t()
            closed += (gram - torch.diag(torch.diag(gram))).pow(2).sum().item()
    closed *= 1e-4
    assert (a.loss - b.loss).item() == pytest.approx(closed, rel=1e-4)
    assert a.logs["ortho_penalty"] == pytest.approx(closed, rel=1e-4) and "ortho_penalty" not in b.logs
    assert with_beta.loss(batch, "critic").loss.requires_grad  # the critic's loss has no generator penalty
    assert "ortho_penalty" not in with_beta.loss(batch, "critic").logs


def test_truncation_bounds_z_and_infinity_is_plain_sampling():
    model = biggan(conditional=True)
    labels = torch.arange(64) % 10
    seen = []
    hook = model.gen.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    model.sample(64, seeded(0), labels, truncation=0.3)
    hook.remove()
    assert seen[0].shape == (64, model.config.z_dim) and seen[0].abs().max() <= 0.3
    assert (model.latent(2000, seeded(1), 0.5).abs() <= 0.5).all()
    plain = model.sample(8, seeded(2), labels[:8])  # the base signature, no truncation
    torch.testing.assert_close(model.sample(8, seeded(2), labels[:8], truncation=math.inf), plain, rtol=0, atol=0)
    assert not torch.equal(model.sample(8, seeded(2), labels[:8], truncation=0.5), plain)
    toy = biggan(TOY)  # the MLP path truncates too
    torch.testing.assert_close(toy.sample(8, seeded(2), truncation=math.inf), toy.sample(8, seeded(2)))


def test_sampling_leaves_the_model_as_it_was():
    model = biggan(conditional=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.sample(8, seeded(0), torch.arange(8), truncation=1.0)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_a_few_steps_on_labelled_digits_are_finite():
    model = biggan(conditional=True)
    logs = train_steps(model, lambda: make_batch(DIGITS, 16), 3)
    assert all(math.isfinite(v) for row in logs for v in row.values())
    assert logs[-1]["ortho_penalty"] > 0
    x = model.sample(10, seeded(0), condition=torch.arange(10))
    assert x.shape == (10, 1, 8, 8) and x.min() >= -1 and x.max() < 1
    with pytest.raises(ValueError, match="conditional"):
        model.sample(2, seeded(0))


def test_vectors_get_spectrally_normalised_mlps_and_bad_combinations_are_refused():
    model = biggan(TOY)
    assert model.config.arch == "mlp"
    weighted = [m for net in (model.gen, model.critic) for m in net.modules() if isinstance(m, nn.Linear)]
    assert weighted and all(parametrize.is_parametrized(m, "weight") for m in weighted)
    with pytest.raises(ValueError, match="conditional"):
        biggan(TOY, conditional=True)
    with pytest.raises(ConfigError, match="minibatch_discrimination"):
        biggan(minibatch_discrimination=2)
    with pytest.raises(ConfigError, match="pack"):
        biggan(conditional=True, pack=2)
    packed = biggan(pack=2)  # unconditional packing: packs stacked along the channels
    assert torch.isfinite(packed.loss(make_batch(DIGITS, 8), "critic").loss)
    with pytest.raises(ValueError, match="arch: 'biggan' needs images 4·2\\^k pixels wide"):
        biggan(DataSpec(shape=(1, 28, 28), kind="image", levels=256))
    wide = biggan(IMAGE32, conditional=True, attention=16)
    assert wide.sample(2, seeded(0), torch.tensor([1, 2])).shape == (2, 1, 32, 32)
