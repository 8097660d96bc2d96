"""Liu CNN: shapes, the pooling-length rule, parameter counts, backbone/head split."""
import pytest

torch = pytest.importorskip("torch")

from trainer.models import (LIU_BLOCKS, Backbone, LiuCNN, build_model, count_parameters, flat_size,  # noqa: E402
                            parameter_count, pool_window, pooled_lengths)

POINTS = 1392


def _lengths_by_running(model: LiuCNN, points: int) -> list[int]:
    """Length after each conv block, measured with forward hooks on the last layer of each block."""
    seen: list[int] = []
    layers = list(model.backbone.conv)
    # A block ends just before the next Conv1d (or at the end of the stack).
    ends = [i - 1 for i, layer in enumerate(layers) if isinstance(layer, torch.nn.Conv1d) and i > 0] + [len(layers) - 1]
    for i in ends:
        layers[i].register_forward_hook(lambda mod, inp, out: seen.append(out.shape[-1]))
    with torch.no_grad():
        model.backbone.conv(torch.zeros(1, 1, points))
    return seen


@pytest.mark.parametrize("m,n", [(2, 0), (2, 1), (2, 3), (3, 3), (4, 4), (2, 6), (5, 5), (2, 10), (8, 10),
                                 (3, 7), (1, 4), (64, 3), (2, 16)])
def test_shapes_and_length_rule(m, n):
    model = LiuCNN(POINTS, classes=5, pool=m, n_pool=n, dense=32).eval()
    x = torch.rand(3, POINTS)
    with torch.no_grad():
        feats = model.backbone(x)
        logits = model.head(feats)
    assert feats.shape == (3, 32)
    assert logits.shape == (3, 5)
    assert torch.allclose(model(x), logits)
    lengths = pooled_lengths(POINTS, m, n)
    assert len(lengths) == max(3, n)
    assert _lengths_by_running(model, POINTS) == lengths
    assert min(lengths) >= 1
    assert model.backbone.flat_size == flat_size(POINTS, m, n)
    assert count_parameters(model) == parameter_count(POINTS, 5, m, n, 32)


def test_length_rule_arithmetic():
    # Liu's original: m=2, n=3 on 1392 points.
    assert pooled_lengths(1392, 2, 3) == [696, 348, 174]
    # The pool window is clipped to the length, so the length never falls below 1 ...
    assert pool_window(3, 8) == 3 and pool_window(1, 8) == 1
    lengths = pooled_lengths(1392, 2, 12)
    assert lengths[-3:] == [1, 1, 1]
    # ... and is never increased.
    assert all(b <= a for a, b in zip(lengths, lengths[1:]))
    # n < 3: only the first n blocks pool.
    assert pooled_lengths(100, 2, 1) == [50, 50, 50]


def test_liu_original_is_too_big_for_the_edge():
    # Documented motivation for the smaller default: ~23M parameters (~92 MB float32).
    n = parameter_count(1392, 63, 2, 3, 2048)
    assert 22e6 < n < 24e6


def test_extra_blocks_use_64_filters_k5():
    b = Backbone(POINTS, pool=2, n_pool=5, dense=8)
    convs = [layer for layer in b.conv if isinstance(layer, torch.nn.Conv1d)]
    assert [(c.out_channels, c.kernel_size[0]) for c in convs] == list(LIU_BLOCKS) + [(64, 5), (64, 5)]


def test_dropout_only_in_training():
    model = LiuCNN(POINTS, 3, pool=4, n_pool=4, dense=16, dropout=0.5)
    x = torch.rand(2, POINTS)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model.backbone(x), model.backbone(x))
    model.train()
    torch.manual_seed(0)
    with torch.no_grad():
        assert not torch.equal(model.backbone(x), model.backbone(x))


def test_build_model_from_manifest_params():
    m = LiuCNN(POINTS, 4, pool=3, n_pool=4, dense=20)
    params = dict(m.params, flat_size=m.backbone.flat_size, parameters=count_parameters(m))
    rebuilt = build_model(params)
    assert rebuilt.params == m.params
    with pytest.raises(ValueError, match="unknown"):
        build_model({**params, "bogus": 1})


@pytest.mark.parametrize("kw", [{"pool": 0}, {"n_pool": 17}, {"n_pool": -1}, {"dense": 0}, {"dropout": 1.0}])
def test_bad_options_rejected(kw):
    args = {"points": POINTS, "classes": 3, **kw}
    with pytest.raises(ValueError):
        LiuCNN(**args)


def test_deep_stacks_keep_the_signal_that_shallow_ones_keep():
    """m=2 n=10 (Soysal's deepest setting) must hand its dense layer features that depend on the
    input: with torch's default convolution init ten LeakyReLU layers left them constant up to
    ~1e-5 (bias only) and the network never left chance (stop 18: train loss stayed at ln 63)."""
    torch.manual_seed(1)
    x = torch.rand(16, POINTS)
    spread = {}
    for n in (3, 10):
        torch.manual_seed(0)
        net = Backbone(POINTS, pool=2, n_pool=n, dense=32).eval()
        with torch.no_grad():
            spread[n] = float(net.conv(x.unsqueeze(1)).flatten(1).std(0).mean())  # across spectra
    assert spread[10] > 0.1 * spread[3], spread
    # n <= 3 keeps torch's default init: the shipped model's recorded command rebuilds it bit for bit.
    torch.manual_seed(0)
    a = Backbone(POINTS, pool=3, n_pool=3, dense=8)
    torch.manual_seed(0)
    assert torch.equal(a.conv[0].weight, torch.nn.Conv1d(1, 16, 21, padding=10).weight)
