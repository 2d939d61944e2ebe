"""NADE and MADE on discrete data: NADE's likelihood against brute-force enumeration with an
independent naive implementation, its running sum against the from-scratch recomputation,
causality by gradient probing, normalisation of MADE's softmax and of both ensembles, samples that
follow the likelihood, saving ensembles, and the digits source's `binarize` option."""

from __future__ import annotations

import gzip
import itertools
import math

import numpy as np
import pytest
import torch
from torch.autograd import grad

import gm.models  # noqa: F401  (fills the registry)
from gm.core.config import ConfigError, build
from gm.core.registry import FAMILIES
from gm.data.dataspec import DataSpec
from gm.data.sources import build_source, source_hash
from gm.models.base import Batch, load_model, save_model
from gm.models.nade import from_sequence, to_sequence
from gm.nn.observation import bin_centres
from gm.stages.prepare import prepare
from tests.helpers import seeded

BINARY6 = DataSpec(shape=(1, 2, 3), kind="image", levels=2)  # 2^6 = 64 images
TERNARY4 = DataSpec(shape=(2, 1, 2), kind="image", levels=3)  # two channels: 3^4 = 81 images
GREY4 = DataSpec(shape=(1, 2, 2), kind="image", levels=3)


def make(family: str, data: DataSpec, **overrides):
    """A small model with random (far from initial) weights, in float64 and eval mode."""
    cls = FAMILIES[family]
    torch.manual_seed(0)
    model = cls(build(cls.config_cls, {"hidden": 7 if family == "nade" else 24, **overrides}, f"test.{family}"),
                data)
    g = seeded(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.7 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model.double().eval()


def all_images(data: DataSpec) -> torch.Tensor:
    """Every value of `data` as levels (L^D, *shape), in row-major order of the flattened shape."""
    rows = list(itertools.product(range(data.levels), repeat=data.dim))
    return torch.tensor(rows).view(-1, *data.shape)


def log_mass(model, v: torch.Tensor, labels=None) -> torch.Tensor:
    """log P(v) (nats) of levels v from the model's model-space log_prob."""
    x = bin_centres(v, model.data).double()
    return model.log_prob(x, labels) - model.data.dim * math.log(model.data.scale)


def raster_positions(data: DataSpec) -> list[tuple[int, int, int]]:
    """(channel, row, column) of each position in the order the brief fixes: raster order over pixels,
    the channels of a pixel consecutive (PixelRNN's order)."""
    c, h, w = data.shape
    return [(ch, r, col) for r in range(h) for col in range(w) for ch in range(c)]


def naive_nade_log_mass(body, v_img: torch.Tensor, order: list[int]) -> float:
    """log P(v | ordering) of one image by Larochelle & Murray's Eqs. 5-6, recomputing every h_d from
    scratch: h_d = act(c + Σ_{j before d} W[:, j] x_j (+ U[:, j])), O(D²·H). Written here from the
    parameters alone: no code of the model's forward pass is used."""
    data = body.data
    pos = raster_positions(data)
    levels = [int(v_img[p]) for p in pos]  # the sequence, by the brief's order
    total = 0.0
    for t, d in enumerate(order):
        a = body.c.clone()
        for j in order[:t]:
            a = a + (levels[j] * body.W[j, 0] if body.binary else body.W[j, levels[j]])
            if body.U is not None:
                a = a + body.U[j]
        h = body.act(a)
        if body.binary:
            p1 = torch.sigmoid(body.b[d, 0] + body.V[d, 0] @ h)  # Eq. 5
            total += math.log(float(p1 if levels[d] == 1 else 1 - p1))
        else:
            logits = body.b[d] + body.V[d] @ h  # (L,): the categorical extension's softmax
            total += float(torch.log_softmax(logits, -1)[levels[d]])
    return total


# --------------------------------------------------------------------------- NADE against brute force


@pytest.mark.parametrize("data", [BINARY6, TERNARY4, GREY4], ids=["binary-6px", "3-level-2ch", "3-level-grey"])
def test_nade_log_prob_is_the_naive_chain_rule_and_sums_to_one(data):
    model = make("nade", data)
    v = all_images(data)
    with torch.no_grad():
        got = log_mass(model, v)
        naive = torch.tensor([naive_nade_log_mass(model.body, img, list(range(data.dim))) for img in v],
                             dtype=torch.float64)
    assert torch.allclose(got, naive, atol=1e-9, rtol=0), (got - naive).abs().max()
    assert abs(float(got.exp().sum()) - 1) < 1e-6
    assert got.exp().std() > 0.1 / len(v), "a far from uniform model: the check is not vacuous"


@pytest.mark.parametrize("data", [BINARY6, GREY4], ids=["binary", "3-level"])
def test_nade_ensemble_of_orderings_is_the_naive_mixture_and_sums_to_one(data):
    """EoNADE (Uria et al. 2014): log (1/K) Σ_k P(v | o_k), with the mask input U on binary data."""
    model = make("nade", data, order_agnostic=True, orderings=3)
    body = model.body
    orders = body.orders.tolist()
    assert orders[0] == list(range(data.dim)) and len({tuple(o) for o in orders}) == 3
    assert (body.U is not None) == (data.levels == 2)
    v = all_images(data)
    with torch.no_grad():
        got = log_mass(model, v)
        naive = torch.tensor([np.logaddexp.reduce([naive_nade_log_mass(body, img, o) for o in orders]) - math.log(3)
                              for img in v], dtype=torch.float64)
        single = [log_mass(model, v[:1]) for _ in range(2)]
    assert torch.allclose(got, naive, atol=1e-9, rtol=0), (got - naive).abs().max()
    assert abs(float(got.exp().sum()) - 1) < 1e-6
    assert torch.equal(*single), "the eval-mode likelihood is deterministic"


def test_running_sum_equals_the_naive_recomputation():
    """Three computations of NADE's conditionals must agree exactly: the from-scratch O(D²·H)
    recomputation of each h_d (the definition, Eq. 6), the batched exclusive cumulative sum that
    log_prob uses, and the one-step-at-a-time running sum a_{t+1} = a_t + W[:, o_t] x_{o_t} (Eq. 7)
    that sampling uses. The last two are what make NADE O(D·H); if the sequential path drifted from
    the batched one, samples would not follow the likelihood that training optimises."""
    data = DataSpec(shape=(2, 2, 2), kind="image", levels=4)
    model = make("nade", data, order_agnostic=True, orderings=2)
    body = model.body
    v = torch.randint(0, data.levels, (5, *data.shape), generator=seeded(3))
    seq = to_sequence(v, data.shape)
    order = torch.stack([torch.randperm(data.dim, generator=seeded(i)) for i in range(5)])  # one per row
    with torch.no_grad():
        batched = body.sequence_log_mass(seq, order)  # (B, D), natural order
        levels, stepwise = body.run(5, order, v=seq)
        for b in range(5):
            assert torch.equal(levels[b], seq[b])
            naive_total = naive_nade_log_mass(body, v[b], order[b].tolist())
            assert math.isclose(float(batched[b].sum()), naive_total, abs_tol=1e-9)
    assert torch.allclose(batched, stepwise, atol=1e-12, rtol=0)


def test_sequence_order_is_raster_with_channels_consecutive():
    data = DataSpec(shape=(2, 2, 3), kind="image", levels=5)
    img = torch.arange(data.dim).view(1, *data.shape)
    seq = to_sequence(img, data.shape)[0].tolist()
    assert seq == [int(img[0, ch, r, c]) for ch, r, c in raster_positions(data)]
    assert torch.equal(from_sequence(to_sequence(img, data.shape), data.shape), img)
    audio = DataSpec(shape=(1, 6), kind="audio", levels=4)
    t = torch.arange(6).view(1, 1, 6)
    assert to_sequence(t, audio.shape)[0].tolist() == list(range(6))


# --------------------------------------------------------------------------- causality


def assert_triangular(out: torch.Tensor, inp: torch.Tensor, ranks: list[int], full: bool) -> None:
    """Outputs (B, D, L) of position d: zero gradient from inputs (B, D, ...) of rank >= rank[d];
    with `full`, some gradient from every input of lower rank."""
    d = out.shape[1]
    for pos in range(d):
        (g,) = grad(out[:, pos].sum(), inp, retain_graph=True)
        seen = g.abs().flatten(2).sum((0, 2)) > 0 if g.dim() > 2 else g.abs().sum(0) > 0  # (D,)
        later = [j for j in range(d) if ranks[j] >= ranks[pos]]
        assert not seen[later].any(), f"position {pos} (rank {ranks[pos]}) sees {seen.nonzero().flatten().tolist()}"
        if full:
            earlier = [j for j in range(d) if ranks[j] < ranks[pos]]
            assert seen[earlier].all(), f"position {pos} misses some of {earlier}"


@pytest.mark.parametrize("data", [DataSpec((2, 3, 3), "image", levels=3), BINARY6], ids=["2ch-3level", "binary"])
def test_nade_is_causal_in_each_ordering(data):
    model = make("nade", data, order_agnostic=True, orderings=3)
    body = model.body
    seq = to_sequence(torch.randint(0, data.levels, (3, *data.shape), generator=seeded(0)), data.shape)
    for order in body.orders:
        inputs = body.encode(seq).requires_grad_(True)  # (B, D, L): probe the input of Eq. 6
        ranks = order.argsort().tolist()  # rank of each position
        assert_triangular(body.sequence_logits(inputs, order), inputs, ranks, full=True)


@pytest.mark.parametrize("data", [DataSpec((2, 3, 3), "image", levels=3), BINARY6], ids=["2ch-3level", "binary"])
def test_made_is_causal_under_every_mask(data):
    model = make("made", data, masks=3, depth=2, activation="tanh")  # tanh: no dead unit hides a path
    body = model.body
    seq = to_sequence(torch.randint(0, data.levels, (3, *data.shape), generator=seeded(0)), data.shape)
    x = bin_centres(seq, data).double().requires_grad_(True)  # (B, D), what the network reads
    for k in range(3):
        body.use_mask(k)
        # mask 0 (cyclic degrees, 24 units >= D - 1) connects every earlier position; drawn degrees may not
        assert_triangular(body.logits(x, None), x, body.ranks[k].tolist(), full=k == 0)
    assert body.ranks[0].tolist() == list(range(data.dim))
    assert len({tuple(r) for r in body.ranks.tolist()}) == 3


# --------------------------------------------------------------------------- MADE: normalisation


@pytest.mark.parametrize("data,masks", [(GREY4, 1), (GREY4, 3), (BINARY6, 2), (TERNARY4, 2)],
                         ids=["3-level", "3-level-ensemble", "binary-ensemble", "2ch-ensemble"])
def test_made_softmax_sums_to_one_by_enumeration(data, masks):
    model = make("made", data, masks=masks)
    with torch.no_grad():
        p = log_mass(model, all_images(data)).exp()
    assert abs(float(p.sum()) - 1) < 1e-6
    assert p.std() > 0.1 / len(p), "a far from uniform model: the check is not vacuous"


def test_made_ensemble_is_the_mean_of_its_masks():
    model = make("made", GREY4, masks=3)
    v = all_images(GREY4)
    x = bin_centres(v, GREY4).double()
    with torch.no_grad():
        ens = log_mass(model, v)
        seq = to_sequence(v, GREY4.shape)
        per = []
        for k in range(3):
            model.body.use_mask(k)
            logp = torch.log_softmax(model.body.logits(bin_centres(seq, GREY4).double(), None), -1)
            per.append(logp.gather(-1, seq.unsqueeze(-1)).squeeze(-1).sum(1))
    expected = torch.logsumexp(torch.stack(per), 0) - math.log(3)
    assert torch.allclose(ens, expected, atol=1e-12)
    assert not torch.allclose(per[0], per[1]), "the masks differ"
    assert torch.equal(model.log_prob(x), model.log_prob(x)), "eval uses every mask, no draw"


# --------------------------------------------------------------------------- samples, conditioning, saving


@pytest.mark.parametrize("family,ensemble", [("nade", {"order_agnostic": True, "orderings": 3}),
                                             ("nade", {}), ("made", {"masks": 3})],
                         ids=["eonade", "nade", "made-ensemble"])
def test_samples_follow_the_likelihood(family, ensemble):
    data = DataSpec(shape=(1, 1, 3), kind="image", levels=2)  # 8 images
    model = make(family, data, **ensemble)
    n = 20000
    s = model.sample(n, generator=seeded(5))
    v = torch.floor(s * data.scale + data.shift).long().view(n, -1)
    assert torch.equal(bin_centres(v, data).view_as(s), s), "samples are bin centres"
    counts = torch.bincount(v[:, 0] * 4 + v[:, 1] * 2 + v[:, 2], minlength=8).double()
    with torch.no_grad():
        p = log_mass(model, all_images(data)).exp()  # the same index: levels in row-major order
    sd = (n * p * (1 - p)).sqrt()
    assert ((counts - n * p).abs() < 5 * sd + 1).all(), (counts / n, p)


@pytest.mark.parametrize("family", ["nade", "made"])
def test_conditional_log_prob_marginalises_the_label(family):
    data = DataSpec(shape=(1, 1, 3), kind="image", levels=3, num_classes=2)
    model = make(family, data, conditional=True)
    v = all_images(data)
    with torch.no_grad():
        per = [log_mass(model, v, torch.full((len(v),), y)) for y in range(2)]
        marginal = log_mass(model, v)
    for lp in per:
        assert abs(float(lp.exp().sum()) - 1) < 1e-6
    assert not torch.allclose(per[0], per[1]), "the label changes the model"
    assert torch.allclose(marginal, torch.logsumexp(torch.stack(per), 0) - math.log(2), atol=1e-12)


@pytest.mark.parametrize("family,ensemble", [("nade", {"order_agnostic": True, "orderings": 4}),
                                             ("made", {"masks": 4})])
def test_ensembles_survive_save_and_load(family, ensemble, tmp_path):
    model = make(family, GREY4, **ensemble).float()
    loaded = load_model(save_model(model, tmp_path / "m"))
    x = bin_centres(all_images(GREY4), GREY4)
    assert torch.equal(model.log_prob(x), loaded.log_prob(x))
    assert torch.equal(model.sample(6, seeded(0)), loaded.sample(6, seeded(0)))


@pytest.mark.parametrize("family,ensemble", [("nade", {"order_agnostic": True, "orderings": 4}),
                                             ("nade", {}), ("made", {"masks": 4})])
def test_training_lowers_the_nll(family, ensemble):
    data = DataSpec(shape=(1, 3, 3), kind="image", levels=3)
    cls = FAMILIES[family]
    torch.manual_seed(0)
    model = cls(build(cls.config_cls, {"hidden": 32, "lr": 1e-2, **ensemble}, "t"), data)
    g = seeded(0)
    v = torch.randint(0, 3, (16, *data.shape), generator=g)
    v[:, :, :, 1] = v[:, :, :, 0]  # a learnable dependency
    x = data.to_model(v, generator=g)
    opt = model.step_groups()[0].make_optimizer()
    before = -model.log_prob(x).mean().item()
    for _ in range(60):
        out = model.loss(Batch(x), model.group)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    after = -model.log_prob(x).mean().item()
    assert after < before - 2.0, (before, after)


def test_bad_configs_raise():
    with pytest.raises(ConfigError, match="orderings"):
        build(FAMILIES["nade"].config_cls, {"orderings": 4}, "m")
    with pytest.raises(ConfigError, match="masks"):
        build(FAMILIES["made"].config_cls, {"masks": 0}, "m")
    with pytest.raises(ConfigError, match="activation"):
        build(FAMILIES["nade"].config_cls, {"activation": "tanh"}, "m")


def test_discrete_audio_is_a_sequence():
    data = DataSpec(shape=(1, 5), kind="audio", levels=3)
    for family in ("nade", "made"):
        model = make(family, data)
        assert model.sample(4, seeded(0)).shape == (4, 1, 5)
        with torch.no_grad():
            assert abs(float(log_mass(model, all_images(data)).exp().sum()) - 1) < 1e-6


# --------------------------------------------------------------------------- binarized digits


def write_digits_csv(root, n: int = 60) -> np.ndarray:
    """A digits-format CSV of n rows (64 pixels 0..16 cycling, then the label n % 10); returns the pixels."""
    pixels = (np.arange(n * 64).reshape(n, 64) * 7) % 17
    rows = [",".join(map(str, list(p) + [i % 10])) for i, p in enumerate(pixels)]
    path = root / "data" / "digits" / "digits.csv.gz"
    path.parent.mkdir(parents=True)
    path.write_bytes(gzip.compress("\n".join(rows).encode()))
    return pixels


def test_binarize_thresholds_the_digits(tmp_path):
    pixels = write_digits_csv(tmp_path)
    plain = build_source("d", {"source": "digits"})
    binary = build_source("d", {"source": "digits", "binarize": 8})
    x0, y0, info0 = plain.load(tmp_path, 0)
    x, y, info = binary.load(tmp_path, 0)
    assert info0["levels"] == 17 and info["levels"] == 2
    assert np.array_equal(x.reshape(len(x), 64), (pixels >= 8).astype(np.float32))
    assert set(np.unique(x)) == {0.0, 1.0} and np.array_equal(y, y0)
    assert source_hash(plain, info0, tmp_path, 0) != source_hash(binary, info, tmp_path, 0)
    assert source_hash(binary, info, tmp_path, 0) != source_hash(
        build_source("d", {"source": "digits", "binarize": 9}), info, tmp_path, 0)
    meta = prepare("bin", binary, tmp_path, tmp_path / "prepared", seed=0, val_fraction=0.2, test_fraction=0.2)
    assert meta["levels"] == 2 and meta["range"] == [0.0, 1.0]


@pytest.mark.parametrize("bad,message", [(0, "expected a value >= 1"), (17, "expected a value <= 16"),
                                         ("half", "expected an integer or null")])
def test_bad_binarize_values_name_the_field(bad, message):
    with pytest.raises(ConfigError, match=f"data.datasets.d.binarize: {message}"):
        build_source("d", {"source": "digits", "binarize": bad})


def test_stacked_digits_are_unaffected_by_binarize(tmp_path):
    write_digits_csv(tmp_path)
    with pytest.raises(ConfigError, match="binarize: only the digits source"):
        build_source("s", {"source": "stacked_digits", "binarize": 8})
    x, _, info = build_source("s", {"source": "stacked_digits", "n": 30}).load(tmp_path, 0)
    assert info["levels"] == 17 and x.max() > 1
