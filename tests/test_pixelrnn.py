"""PixelRNN (pixelrnn: Row LSTM and Diagonal BiLSTM): the layers against their per-pixel definitions
(Eq. 3, §3.1-3.2), causality by autograd (the BiLSTM's full context, the Row LSTM's triangle, and
a BiLSTM without its one-row shift caught), skewing, the intensity input, normalisation by
enumeration, the stepwise sampler against full forward passes, labels, training and configs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import gm.nn.pixelrnn as pixelrnn
from gm.core.config import ConfigError, build
from gm.core.registry import FAMILIES
from gm.data.dataspec import DataSpec
from gm.models.pixelcnn import ChannelGrid
from gm.models.pixelrnn import PixelRNNModel
from gm.nn.observation import bin_centres, levels_of
from gm.nn.pixelrnn import DiagonalBiLSTM, RowLSTM, skew, unskew
from tests.helpers import DIGITS, perturb, seeded, train_single_group
from tests.test_autoregressive import assert_strictly_causal, digits_like, sensitivity

ARCHS = ["row_lstm", "diagonal_bilstm"]


def make(arch: str, data: DataSpec, **overrides):
    cls = FAMILIES["pixelrnn"]
    assert cls is PixelRNNModel
    torch.manual_seed(0)
    return cls(build(cls.config_cls, {"arch": arch, "hidden": 4, "depth": 2, **overrides}, "test.pixelrnn"), data)


def all_images(data: DataSpec) -> torch.Tensor:
    """Every image of `data`, (L^D, C, H, W) levels."""
    axes = [torch.arange(data.levels)] * data.dim
    return torch.cartesian_prod(*axes).view(-1, *data.shape)


# --------------------------------------------------------------------------- skewing


def test_skew_shifts_row_r_by_r_and_unskew_inverts_it():
    x = torch.randn(2, 3, 4, 5, generator=seeded(0))
    s = skew(x)
    assert s.shape == (2, 3, 4, 8)
    expected = torch.zeros_like(s)
    for r in range(4):
        expected[:, :, r, r:r + 5] = x[:, :, r]
    assert torch.equal(s, expected)
    assert torch.equal(unskew(s), x)
    # unskew reads only the image's own positions: whatever sits in the padding is dropped
    assert torch.equal(unskew(s + 100 * (expected == 0)), x)


@pytest.mark.parametrize("h,w", [(1, 1), (1, 6), (6, 1), (3, 7), (7, 3)])
def test_skew_round_trip_on_any_shape(h, w):
    x = torch.randn(1, 2, h, w, generator=seeded(h * 10 + w))
    assert torch.equal(unskew(skew(x)), x)
    assert skew(x).shape == (1, 2, h, w + h - 1)


# --------------------------------------------------------------------------- the layers against Eq. 3, pixel by pixel


def cell(pre: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 3 on one position: pre (B, 4h) as [o, f, i, g], c (B, h)."""
    o, f, i, g = pre.chunk(4, dim=1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


@torch.no_grad()
def test_row_lstm_is_eq3_row_by_row_with_1xk_convolutions():
    b, cin, hid, k, height, width = 2, 3, 4, 5, 4, 6
    layer = RowLSTM(cin, hid, k).double()
    perturb(layer, 0.3)
    x = torch.randn(b, cin, height, width, generator=seeded(1), dtype=torch.float64)
    w_is, b_is = layer.input_to_state.weight[:, :, 0], layer.input_to_state.bias  # (4h, C, k//2+1), taps c-k//2..c
    w_ss = layer.state_to_state.weight  # (4h, h, k), taps c-k//2..c+k//2
    n = k // 2
    h = torch.zeros(b, hid, height + 1, width + 2 * n, dtype=torch.float64)  # row 0 is "row -1", zero columns around
    c = torch.zeros(b, hid, width, dtype=torch.float64)
    for r in range(height):
        c_next = torch.zeros_like(c)
        for col in range(width):
            pre = b_is.expand(b, -1).clone()
            for t in range(n + 1):  # mask B: the input up to and including column col
                if 0 <= col - n + t:
                    pre += x[:, :, r, col - n + t] @ w_is[:, :, t].T
            for t in range(k):  # the whole previous row within k//2 of col
                pre += h[:, :, r, col + t] @ w_ss[:, :, t].T
            h[:, :, r + 1, col + n], c_next[:, :, col] = cell(pre, c[:, :, col])
        c = c_next
    torch.testing.assert_close(layer(x), h[:, :, 1:, n:n + width], rtol=1e-10, atol=1e-12)


@torch.no_grad()
def test_diagonal_bilstm_is_eq3_along_both_diagonal_directions_with_the_right_map_shifted_down():
    b, cin, hid, height, width = 2, 3, 4, 4, 5
    layer = DiagonalBiLSTM(cin, hid).double()
    perturb(layer, 0.3)
    x = torch.randn(b, cin, height, width, generator=seeded(1), dtype=torch.float64)
    w_is = layer.input_to_state.weight[:, :, 0, 0].view(2, 4 * hid, cin)  # per direction
    b_is = layer.input_to_state.bias.view(2, 4 * hid)
    w_ss = layer.state_to_state.weight.view(2, 4 * hid, hid, 2)  # tap 0: the state above, tap 1: the neighbour
    zero = torch.zeros(b, hid, dtype=torch.float64)

    def scan(d: int, columns) -> torch.Tensor:
        """Direction d: state (r, col) from (r-1, col) and (r, col ∓ 1), the neighbour already scanned."""
        h, c = {}, {}
        for r in range(height):
            prev = None
            for col in columns:
                pre = x[:, :, r, col] @ w_is[d].T + b_is[d]
                pre = pre + h.get((r - 1, col), zero) @ w_ss[d, :, :, 0].T
                pre = pre + (h[(r, prev)] if prev is not None else zero) @ w_ss[d, :, :, 1].T
                h[(r, col)], c[(r, col)] = cell(pre, c.get((r, prev), zero) if prev is not None else zero)
                prev = col
        return torch.stack([torch.stack([h[(r, col)] for col in range(width)], -1) for r in range(height)], -2)

    # The cell state flows from the neighbour in the scan (the 2×1 conv's lower tap), as in Eq. 3.
    left = scan(0, range(width))  # (B, h, H, W): (r, c) sees the quadrant above-left
    right = scan(1, range(width - 1, -1, -1))  # (r, c) sees the quadrant above-right
    expected = left + F.pad(right, (0, 0, 1, 0))[:, :, :height]  # the right map one row down (§3.2)
    torch.testing.assert_close(layer(x), expected, rtol=1e-10, atol=1e-12)


def test_intensity_input_is_the_sub_pixel_value_affine_per_channel():
    data = DataSpec((3, 2, 2), "image", levels=5)
    net = make("row_lstm", data).body.net
    perturb(net.embed, 1.0)
    table = net.embed.weight  # (C·L, 2h)
    for ch in range(3):
        for level in range(5):
            value = (2 * level + 1) / 5 - 1  # the bin centre in model space
            assert value == pytest.approx(bin_centres(torch.tensor(level), data).item())
            expected = value * net.embed.scale[ch] + net.embed.shift[ch]
            torch.testing.assert_close(table[ch * 5 + level], expected)
    s = torch.randint(0, 15, (2, 2, 6), generator=seeded(0))
    onehot = F.one_hot(s, 15).permute(0, 3, 1, 2).float()
    torch.testing.assert_close(net(onehot), net(s))  # symbols and one-hot inputs alike
    symbols = make("row_lstm", data, input="symbols").body.net
    assert isinstance(symbols.embed, torch.nn.Embedding) and symbols.embed.num_embeddings == 15


# --------------------------------------------------------------------------- causality


def grid_probe(model) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, one-hot input) of the model's symbol net on its channel grid, for autograd probes."""
    grid, data = model.body, model.data
    v = torch.randint(0, data.levels, (3, *data.shape), generator=seeded(1))
    s = grid.symbols(v)  # (B, H, W·C): raster order on it is Eq. 2's order
    onehot = F.one_hot(s, grid.net.n_symbols).permute(0, 3, 1, 2).double().requires_grad_(True)
    return grid.net.double()(onehot), onehot


GRIDS = [DataSpec((1, 5, 6), "image", levels=4), DataSpec((3, 4, 3), "image", levels=3)]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("data", GRIDS, ids=["grey", "rgb"])
def test_every_sub_pixel_depends_only_on_earlier_ones(arch, data):
    model = make(arch, data)
    perturb(model, 0.2)
    assert_strictly_causal(*grid_probe(model))  # zero gradient from j >= i, some from j < i


@pytest.mark.parametrize("data", GRIDS, ids=["grey", "rgb"])
def test_diagonal_bilstm_sees_the_whole_context_but_the_last_pixel_of_the_row_above(data):
    # Every earlier position, with one exception the paper's Fig. 4 leaves out: the last position
    # (r-1, W-1) of the row above reaches (r, c) only through the mask-A layer's k×k window
    # (c + k//2 >= W-1). The right-to-left scan that sees row r-1 reads mask-A features, and the
    # feature at (r-1, W-1) excludes its own pixel; the features of row r that include it enter
    # only the left-to-right scan, which looks left. Deeper layers inherit the same field.
    model = make("diagonal_bilstm", data, first_kernel=3)
    logits, onehot = grid_probe(model)
    height, width = logits.shape[-2:]
    blind = 0
    for j in range(1, height * width):
        r, c = divmod(j, width)
        expected = torch.zeros(height * width, dtype=torch.bool)
        expected[:j] = True
        if r > 0 and c + 1 < width - 1:
            expected[r * width - 1] = False
            blind += 1
        seen = sensitivity(logits, onehot, r, c).flatten()
        assert torch.equal(seen, expected), (r, c, seen.view(height, width).int())
    assert blind > 0


def test_a_diagonal_bilstm_without_the_one_row_shift_sees_the_future(monkeypatch):
    data = GRIDS[0]
    model = make("diagonal_bilstm", data)
    assert_strictly_causal(*grid_probe(model))
    monkeypatch.setattr(pixelrnn, "down_shift", lambda x: x)  # the right map added in place (§3.2 warns)
    logits, onehot = grid_probe(model)
    with pytest.raises(AssertionError, match="depends on"):
        assert_strictly_causal(logits, onehot)
    assert sensitivity(logits, onehot, 2, 3)[2, 3], "the pixel itself leaks into its own prediction"


# --------------------------------------------------------------------------- normalisation and sampling


TINY = [DataSpec((1, 2, 2), "image", levels=3), DataSpec((2, 1, 2), "image", levels=2),
        DataSpec((1, 1, 2), "image", levels=3)]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("data", TINY[:2], ids=["grey2x2", "two-channel"])
@pytest.mark.parametrize("input_", ["intensity", "symbols"])
@torch.no_grad()
def test_probabilities_of_all_images_sum_to_one(arch, data, input_):
    model = make(arch, data, input=input_).eval()
    perturb(model, 0.5, seed=1)
    images = all_images(data)  # 81 and 16 images
    log_p = model.log_prob(bin_centres(images, data)) - data.dim * math.log(data.scale)  # log P(v)
    p = log_p.double().exp()
    assert p.sum().item() == pytest.approx(1.0, abs=1e-5)
    assert p.max() > 10 * p.min(), "the perturbed model should be far from uniform"


@pytest.mark.parametrize("arch", ARCHS)
@torch.no_grad()
def test_conditional_probabilities_sum_to_one_for_each_label(arch):
    data = DataSpec((1, 2, 2), "image", levels=3, num_classes=3)
    model = make(arch, data, conditional=True).eval()
    perturb(model, 0.5, seed=1)
    x = bin_centres(all_images(data), data)
    per_class = torch.stack([model.log_prob(x, torch.full((len(x),), y)) for y in range(3)])  # (3, 81)
    per_class = (per_class - data.dim * math.log(data.scale)).double().exp()
    torch.testing.assert_close(per_class.sum(1), torch.ones(3, dtype=torch.float64), rtol=0, atol=1e-5)
    assert (per_class[0] - per_class[1]).abs().max() > 1e-3, "the label must change the distribution"
    marginal = (model.log_prob(x) - data.dim * math.log(data.scale)).double().exp()
    torch.testing.assert_close(marginal, per_class.mean(0), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("data", [GRIDS[1], DIGITS], ids=["rgb", "digits"])
def test_sampling_is_seeded_and_on_the_levels(arch, data):
    model = make(arch, data)
    perturb(model, 0.3)
    a = model.sample(5, generator=seeded(7))
    assert a.shape == (5, *data.shape)
    assert torch.equal(a, model.sample(5, generator=seeded(7)))
    assert not torch.equal(a, model.sample(5, generator=seeded(8)))
    assert torch.equal(a, bin_centres(levels_of(a, data), data))  # exactly on the bin centres
    assert model.training, "sampling leaves the train/eval mode as it found it"


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("data,conditional", [(GRIDS[1], False), (DataSpec((1, 5, 4), "image", levels=4,
                                                                         num_classes=3), True)],
                         ids=["rgb", "grey-conditional"])
@pytest.mark.parametrize("input_", ["intensity", "symbols"])
@torch.no_grad()
def test_stepwise_sampling_draws_what_the_full_forward_pass_draws(arch, data, conditional, input_):
    model = make(arch, data, conditional=conditional, dropout=0.3, input=input_).eval()
    perturb(model, 0.3)
    labels = torch.arange(6) % 3 if conditional else None
    fast = model.sample(6, generator=seeded(3), condition=labels)
    slow = ChannelGrid.sample(model.body, 6, data.shape, seeded(3), labels)  # a forward pass per sub-pixel
    assert torch.equal(fast, slow)
    # and the logits of each draw are the forward pass's at that position on the finished grid
    net, seen = model.body.net, {}

    def choose(logits, r, col):
        seen[r, col] = logits.clone()
        return torch.randint(0, net.n_symbols, (6,), generator=g)

    g = seeded(4)
    grid = net.sample_grid(6, data.shape[1], data.shape[2] * data.shape[0], choose, labels)
    full = net(grid, labels)  # (6, K, H, W·C)
    assert len(seen) == grid.shape[1] * grid.shape[2]
    for (r, col), logits in seen.items():
        torch.testing.assert_close(logits, full[:, :, r, col], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
@torch.no_grad()
def test_sample_frequencies_follow_log_prob(arch):
    data = TINY[2]  # two pixels of 3 levels: 9 images
    model = make(arch, data).eval()
    perturb(model, 0.5, seed=2)
    images = all_images(data)
    p = (model.log_prob(bin_centres(images, data)) - data.dim * math.log(data.scale)).exp()  # (9,)
    assert p.max() > 0.2
    n = 4000
    v = levels_of(model.sample(n, generator=seeded(0)), data).flatten(1)  # (n, 2)
    freq = torch.bincount(v[:, 0] * 3 + v[:, 1], minlength=9).float() / n
    assert ((freq - p).abs() <= 4 * (p * (1 - p) / n).sqrt() + 2e-3).all(), (freq, p)


# --------------------------------------------------------------------------- training and configs


@pytest.mark.parametrize("arch", ARCHS)
def test_training_lowers_the_nll(arch):
    model = make(arch, DIGITS, lr=3e-3)
    x = DIGITS.to_model(digits_like(16, seed=0), generator=seeded(1))
    losses = train_single_group(model, x, steps=8)
    assert losses[-1] < 0.9 * losses[0], losses


def test_rmsprop_is_offered_as_in_the_paper():
    (group,) = make("row_lstm", DIGITS, optimizer="rmsprop").step_groups()
    assert isinstance(group.make_optimizer(), torch.optim.RMSprop)


@pytest.mark.parametrize("bad", [{"kernel": 2}, {"kernel": 1}, {"first_kernel": 4}, {"arch": "gru"},
                                 {"dropout": 1.0}, {"depth": 0}, {"hidden": 0}, {"optimizer": "sgd"},
                                 {"input": "pixels"}])
def test_bad_configs_raise(bad):
    with pytest.raises(ConfigError, match=next(iter(bad))):
        build(FAMILIES["pixelrnn"].config_cls, bad, "x")


def test_discrete_vectors_are_refused():
    with pytest.raises(ConfigError, match="discrete images"):
        make("diagonal_bilstm", DataSpec((5,), "toy", levels=4))
