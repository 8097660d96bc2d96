"""The model zoo: every --arch builds, splits into backbone + one-Linear head, exports to ONNX like torch,
is deterministic, is counted right, and trains through the CLI."""
import inspect
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from click.testing import CliRunner  # noqa: E402

from calibration.errors import ConfigError  # noqa: E402
from trainer.archs import ARCHS, describe_archs, get_arch  # noqa: E402
from trainer.complexity import cost_summary, count_macs, count_parameters  # noqa: E402
from trainer.config import TrainConfig  # noqa: E402
from trainer.export import export_onnx, onnx_max_difference  # noqa: E402
from trainer.models import build_model  # noqa: E402
from trainer.synthetic import write_synthetic_npz  # noqa: E402

POINTS = 1392
CLASSES = 5

#: Small options per architecture: same structure as the defaults, a fraction of the cost.
SMALL = {
    "liu": {"pool": 4, "n_pool": 4, "dense": 16},
    "sang": {"widths": [8, 8, 16, 16, 16], "depths": [1, 1, 2, 2, 2], "dense": 16},
    "drcnn": {"embed": [8, 16], "depth": 3, "recon": 4, "dense": [32, 16]},
    "fmcnn": {"stem": 8, "squeeze": [4, 4, 8, 8], "expand": [8, 8, 16, 16], "dense": 16},
    "cnn-lstm": {"filters": [4, 8, 8, 8], "hidden": 8, "dense": [16]},
    "compact": {"stem": 8, "widths": [16, 16], "reduce": 4, "dense": 16},
}


def _build(name, seed=0, points=POINTS, classes=CLASSES, **extra):
    torch.manual_seed(seed)
    return build_model({"points": points, "classes": classes, **SMALL[name], **extra}, name)


def test_every_registered_arch_has_small_options():
    assert set(SMALL) == set(ARCHS) == {"liu", "sang", "drcnn", "fmcnn", "cnn-lstm", "compact"}


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_defaults_build_and_split(name):
    """Published-size defaults at 1392 points: shapes, and the head is exactly one Linear."""
    torch.manual_seed(0)
    model = build_model({"points": POINTS, "classes": CLASSES}, name).eval()
    x = torch.rand(2, POINTS)
    with torch.no_grad():
        feats = model.backbone(x)
        logits = model.head(feats)
        assert torch.allclose(model(x), logits)
    assert feats.shape == (2, model.feature_size) and logits.shape == (2, CLASSES)
    assert [type(m) for m in model.head.modules()][1:] == [torch.nn.Linear]
    assert model.head.linear.in_features == model.feature_size
    assert model.arch == name and model.params["points"] == POINTS and model.params["classes"] == CLASSES
    assert model.params == {"points": POINTS, "classes": CLASSES, **get_arch(name).defaults()}


@pytest.mark.parametrize("name", sorted(set(ARCHS) - {"liu"}))
def test_constructor_defaults_are_the_registry_defaults(name):
    spec = get_arch(name)
    sig = inspect.signature(spec.load())
    defaults = {k: p.default for k, p in sig.parameters.items() if k not in ("points", "classes")}
    assert defaults == spec.defaults()


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_onnx_export_matches_torch(name):
    model = _build(name).eval()
    backbone, head = export_onnx(model)
    # Batch 3 differs from the export's example batch: the batch axis is dynamic.
    x = np.random.default_rng(1).random((3, POINTS), dtype=np.float32)
    diff = onnx_max_difference(model, backbone, head, x)
    assert diff["features"] < 1e-4 and diff["logits"] < 1e-4, diff
    # ... and the comparison can fail: other weights do not match these graphs.
    assert onnx_max_difference(_build(name, seed=1), backbone, head, x)["logits"] > 1e-4


@pytest.mark.parametrize("summary,bidirectional", [("last", True), ("last", False), ("mean", False),
                                                   ("max", True), ("flatten", True)])
def test_cnn_lstm_summaries_export_and_size(summary, bidirectional):
    model = _build("cnn-lstm", summary=summary, bidirectional=bidirectional).eval()
    steps, width = model.backbone.steps, 8 * (2 if bidirectional else 1)  # SMALL hidden = 8
    assert model.backbone.fc[0].in_features == width * (steps if summary == "flatten" else 1)
    backbone, head = export_onnx(model)
    x = np.random.default_rng(1).random((3, POINTS), dtype=np.float32)
    diff = onnx_max_difference(model, backbone, head, x)
    assert diff["features"] < 1e-4 and diff["logits"] < 1e-4, diff
    with pytest.raises(ValueError, match="summary"):
        _build("cnn-lstm", summary="first")


def test_cnn_lstm_learns_band_positions(tmp_path):
    """The default cnn-lstm learns; its stop-19 design (last step, no batch-norm) stayed at chance.

    Synthetic minerals differ in where their bands are.  Summarised by its last step, the
    LSTM must carry every band's position through 86 steps of memory; on raw_train.npz that
    design stayed at 4 % (chance) and here it stays near chance too.  Every step's output
    flattened keeps the position (BENCHMARKS.md, issue 5: liu-level accuracy on the Soysal split).
    """
    from calibration.dataset import load_dataset
    from trainer.train import TrainConfig, train

    ds = load_dataset(write_synthetic_npz(tmp_path / "s.npz", n_classes=6, per_class=6, seed=4))

    def top1(**options):
        cfg = TrainConfig(arch="cnn-lstm", arch_options={**SMALL["cnn-lstm"], **options}, epochs=20,
                          batch_size=8, threads=1, val_fraction=0.0, augment=False, calibrate=False)
        return train(ds, cfg).metrics["train_top1"]

    assert top1() >= 0.9  # chance is 1/6


def test_export_leaves_dropout_and_batchnorm_out():
    """Eval mode on export: repeated ONNX runs are identical and batch statistics are not used."""
    import onnxruntime as ort

    model = _build("sang")
    model.train()
    with torch.no_grad():  # move the running statistics away from their initial values
        for _ in range(3):
            model(torch.rand(8, POINTS))
    backbone, _ = export_onnx(model)
    sess = ort.InferenceSession(backbone, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(2).random((4, POINTS), dtype=np.float32)
    a = sess.run(["features"], {"spectrum": x})[0]
    # A spectrum's features do not depend on the rest of its batch (no batch statistics).
    b = sess.run(["features"], {"spectrum": x[:1]})[0]
    np.testing.assert_allclose(a[:1], b, atol=1e-5)
    with torch.no_grad():
        np.testing.assert_allclose(a, model.eval().backbone(torch.from_numpy(x)).numpy(), atol=1e-4)


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_initialisation_is_deterministic_for_a_seed(name):
    a, b, c = _build(name, seed=5), _build(name, seed=5), _build(name, seed=6)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa if sa[k].is_floating_point())


def test_rebuild_from_manifest_params():
    model = _build("compact")
    params = json.loads(json.dumps(dict(model.params, parameters=1, macs=2, flat_size=3)))  # tuples -> lists
    rebuilt = build_model(params, "compact")
    assert rebuilt.params == model.params
    rebuilt.load_state_dict(model.state_dict())
    with pytest.raises(ValueError, match="unknown"):
        build_model({**params, "bogus": 1}, "compact")
    with pytest.raises(ValueError, match="unknown architecture"):
        build_model(params, "vgg")
    with pytest.raises(ValueError, match="widths"):
        build_model({**params, "widths": [0, 4]}, "compact")


@pytest.mark.parametrize("name,points", [("sang", 40), ("cnn-lstm", 20), ("drcnn", 10), ("compact", 8),
                                         ("fmcnn", 8)])
def test_too_short_input_is_refused(name, points):
    # Clipped pools never reach zero length, but unpadded convolutions and flattened sizes can.
    try:
        model = _build(name, points=points).eval()
    except ValueError as e:
        assert str(points) in str(e)
        return
    with torch.no_grad():  # when it builds, it runs
        assert model(torch.rand(2, points)).shape == (2, CLASSES)


def test_sang_valid_padding_lengths():
    model = build_model({"points": 100, "classes": 3, "widths": [4, 4], "depths": [2, 1], "dense": 8}, "sang")
    # 100 -2 -2 = 96 -> pool 48 -> -2 = 46 -> pool 23; 4 channels.
    assert model.backbone.flat_size == 4 * 23
    same = build_model({"points": 100, "classes": 3, "widths": [4, 4], "depths": [2, 1], "dense": 8,
                        "same_padding": True}, "sang")
    assert same.backbone.flat_size == 4 * 25


def test_batchnorm_survives_a_training_batch_of_one():
    model = _build("sang").train()
    model(torch.rand(1, POINTS)).sum().backward()  # the last batch of an epoch can hold one spectrum


def test_drcnn_folds_levels_into_one_linear_head():
    model = _build("drcnn", dropout=0.0)
    with torch.no_grad():
        model.backbone.level_logits.copy_(torch.tensor([0.3, -1.0, 2.0]))
    x = torch.rand(4, POINTS)
    model.train()  # keeps the per-level features; dropout 0 makes train and eval agree except batch-norm (none)
    logits = model(x)
    levels = model.level_logits()                               # (D, N, K): every level through the same head
    w = torch.softmax(torch.tensor([0.3, -1.0, 2.0]), 0)
    assert levels.shape == (3, 4, CLASSES)
    assert torch.allclose(model.backbone.level_weights().sum(), torch.tensor(1.0))
    # The weighted average of the per-level predictions is the head applied to the weighted features.
    assert torch.allclose((w[:, None, None] * levels).sum(0), logits, atol=1e-5)
    # Recursive supervision: (1 - alpha) final + alpha mean of levels.
    y = torch.tensor([0, 1, 2, 3])
    ce = torch.nn.functional.cross_entropy
    expect = 0.5 * ce(logits, y) + 0.5 * torch.stack([ce(levels[d], y) for d in range(3)]).mean()
    assert torch.allclose(model.training_loss(logits, y, ce), expect)
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model(x), logits, atol=1e-5)


def test_counts_by_hand_compact():
    """compact on 90 points: stem 4 k=3, one block (k=3 -> 8), pool 3, reduce 2, dense 5, 3 classes."""
    p = {"points": 90, "classes": 3, "stem": 4, "stem_kernel": 3, "widths": [8], "kernels": [3], "pool": 3,
         "reduce": 2, "global_pool": True, "batch_norm": False, "dense": 5}
    model = build_model(p, "compact")
    # Lengths: 90 -> stem conv 90 -> pool 30 -> block 30 -> pool 10.
    stem = 1 * 4 * 3 + 4                       # conv weights + bias
    dw, pw = 4 * 1 * 3 + 4, 4 * 8 + 8          # depthwise (groups=4), pointwise
    red = 8 * 2 + 2
    flat = 2 * 10 + 2 * 8                      # reduce x length + global avg and max of 8 channels
    dense, head = flat * 5 + 5, 5 * 3 + 3
    assert count_parameters(model) == stem + dw + pw + red + dense + head
    macs = count_macs(model, 90)
    assert macs["conv"] == 90 * 4 * 3 + 30 * 4 * 3 + 30 * 8 * 4 + 10 * 2 * 8
    assert macs["linear"] == flat * 5 + 5 * 3 and macs["lstm"] == 0
    assert cost_summary(model, 90)["flops"] == 2 * macs["total"]
    assert count_macs(model, 90, "head")["total"] == 5 * 3


def test_compact_defaults_within_issue_budget():
    """Issue 5's budget for our device network, at its defaults on the shipped grid and the Soysal
    set's 63 minerals: at most 250 k parameters and 5 MFLOPs per spectrum."""
    cost = cost_summary(build_model({"points": POINTS, "classes": 63}, "compact"), POINTS)
    assert cost["parameters"] <= 250_000, cost
    assert cost["flops"] <= 5_000_000, cost


def test_counts_by_hand_lstm_and_recursion():
    m = build_model({"points": 33, "classes": 2, "filters": [3], "kernel": 2, "pool": 2, "hidden": 5,
                     "dense": [4]}, "cnn-lstm")
    # 33 -> conv k=2: 32 -> pool: 16 steps of 3 channels; LSTM 4H(I+H) + 3H per step.
    assert count_macs(m, 33)["lstm"] == 16 * (4 * 5 * (3 + 5) + 3 * 5)
    assert count_macs(m, 33)["conv"] == 32 * 3 * 1 * 2
    # DRCNN: the recursive conv and the shared branch count once per level.
    d3 = build_model({"points": 64, "classes": 2, "embed": [4], "pool": 2, "depth": 3, "recon": 2,
                      "dense": [6]}, "drcnn")
    d5 = build_model({"points": 64, "classes": 2, "embed": [4], "pool": 2, "depth": 5, "recon": 2,
                      "dense": [6]}, "drcnn")
    per_level = 32 * 4 * 4 * 3 + 32 * 2 * 4 * 3 + 64 * 6  # recursive conv, reconstruction conv, dense
    assert count_macs(d5, 64)["total"] - count_macs(d3, 64)["total"] == 2 * per_level
    assert count_parameters(d5) - count_parameters(d3) == 2  # only the two extra level weights


def test_config_options_per_arch():
    cfg = TrainConfig(arch="compact", arch_options={"widths": "16,32", "dense": "24"}).check()
    assert cfg.arch_params()["widths"] == (16, 32) and cfg.arch_params()["dense"] == 24
    assert TrainConfig().check().arch_params()["pool"] == 3
    with pytest.raises(ConfigError, match="unknown option"):
        TrainConfig(arch="sang", arch_options={"pool": 2}).check()
    with pytest.raises(ConfigError, match="--list-archs"):
        TrainConfig(arch="sang", dense=32).check()
    with pytest.raises(ConfigError, match="--pool"):
        TrainConfig(arch="liu", arch_options={"pool": 2}).check()
    with pytest.raises(ConfigError, match="dropout"):
        TrainConfig(arch="drcnn", arch_options={"dropout": 1.5}).check()
    with pytest.raises(ConfigError, match="unknown architecture"):
        TrainConfig(arch="vgg").check()
    assert all(name in describe_archs() for name in ARCHS)


# ---- CLI -----------------------------------------------------------------------------------------

def test_drcnn_learns_after_its_slow_start(tmp_path):
    """A DRCNN is not broken when a 1-epoch run gives near-constant features: it starts slowly.

    With PyTorch's default initialisation the shared recursive convolution is contractive, so
    at first every level converges to the same input-independent map and only the skip
    connection carries the spectrum; the loss stays near ln(K) for some epochs (here 10),
    then falls.  Measured on raw_train.npz (no augmentation): validation top-1 0.02 after 1
    epoch, 0.29 after 5, 0.67 after 15 (BENCHMARKS.md, issue 5).  A real defect (features
    constant whatever the input) would keep this at chance.
    """
    from calibration.dataset import load_dataset
    from trainer.train import TrainConfig, preprocess_dataset, train

    ds = load_dataset(write_synthetic_npz(tmp_path / "s.npz", n_classes=4, per_class=8, seed=4))
    r = train(ds, TrainConfig(arch="drcnn", arch_options=SMALL["drcnn"], epochs=30, batch_size=8, threads=1,
                              val_fraction=0.0, augment=False, calibrate=False))
    with torch.no_grad():
        f = r.model.backbone(torch.from_numpy(preprocess_dataset(ds))).numpy()
    assert f.std(axis=0).mean() > 0.1 * np.abs(f).mean()  # features differ between spectra
    assert r.metrics["train_top1"] >= 0.75  # chance is 0.25


FAST = ["--epochs", "1", "--batch-size", "8", "--threads", "1", "--quiet", "--no-calibrate"]


@pytest.fixture(scope="module")
def npz(tmp_path_factory):
    return write_synthetic_npz(tmp_path_factory.mktemp("zoo") / "synth.npz", n_classes=3, per_class=5, seed=4)


def _invoke(args):
    from trainer.cli import train

    return CliRunner().invoke(train, [str(a) for a in args])


@pytest.mark.parametrize("name", ["compact", "cnn-lstm", "drcnn"])
def test_cli_trains_and_exports_each_arch(npz, tmp_path, name):
    from edge.bundle import load_bundle
    from edge.classifier import Classifier

    params = [a for k, v in SMALL[name].items()
              for a in ("--param", f"{k}={','.join(map(str, v)) if isinstance(v, list) else v}")]
    out = tmp_path / name
    r = _invoke(["--data", npz, "--out", out, "--arch", name, *params, *FAST])
    assert r.exit_code == 0, r.output + repr(r.exception)
    b = load_bundle(out)
    arch = b.manifest["architecture"]
    assert arch["name"] == name and b.feature_size == 16  # every SMALL config ends in 16 features
    assert arch["params"]["parameters"] > 0 and arch["params"]["macs"] > 0
    assert b.manifest["training"]["config"]["arch"] == name
    # The manifest rebuilds the same architecture.
    rebuilt = build_model(arch["params"], arch["name"])
    assert rebuilt.feature_size == b.feature_size and count_parameters(rebuilt) == arch["params"]["parameters"]
    x = np.random.default_rng(0).random((2, b.input_points), dtype=np.float32)
    assert Classifier(b).predict_proba(x).shape == (2, 3)


def test_cli_is_deterministic_for_a_seed(npz, tmp_path):
    from edge.bundle import load_bundle

    args = ["--data", npz, "--arch", "compact", "--param", "stem=8", "--param", "widths=16,16", "--seed", "7",
            *FAST]
    for d in ("a", "b"):
        assert _invoke([*args, "--out", tmp_path / d]).exit_code == 0
    a, b = load_bundle(tmp_path / "a"), load_bundle(tmp_path / "b")
    assert a.backbone_path.read_bytes() == b.backbone_path.read_bytes()
    assert a.model_id == b.model_id


@pytest.mark.parametrize("args,needle", [
    (["--arch", "compact", "--param", "widths"], "KEY=VALUE"),
    (["--arch", "compact", "--param", "bogus=1"], "unknown option"),
    (["--arch", "compact", "--param", "dense=many"], "dense"),
    (["--arch", "sang", "--dense", "32"], "--param"),
    (["--arch", "compact", "--param", "kernels=4,5"], "odd"),
])
def test_cli_bad_arch_options(npz, tmp_path, args, needle):
    r = _invoke(["--data", npz, "--out", tmp_path / "b", *args, *FAST])
    assert r.exit_code != 0
    text = r.output + str(r.exception)
    assert needle in text, text
    assert not (tmp_path / "b").exists()


def test_cli_lists_archs():
    r = _invoke(["--list-archs"])
    assert r.exit_code == 0 and all(name in r.output for name in ARCHS) and "widths" in r.output


def test_model_size_benchmark_runs(tmp_path):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "model_size.py"
    spec = importlib.util.spec_from_file_location("model_size", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "size.json"
    r = CliRunner().invoke(bench.main, ["--archs", "compact", "--no-train", "--seconds", "0.1",
                                        "--min-runs", "10", "--out", str(out)])
    assert r.exit_code == 0, r.output + repr(r.exception)
    rows = {row["arch"]: row for row in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"compact"}
    for row in rows.values():
        model = build_model({"points": POINTS, "classes": bench.CLASSES, **row["params"]}, row["arch"])
        assert row["parameters"] == count_parameters(model)
        assert row["mflops"] == pytest.approx(2 * count_macs(model, POINTS)["total"] / 1e6)
        assert row["onnx_bytes"] > 4 * row["parameters"] and row["latency"]["runs"] >= 10
        assert 0 < row["latency"]["p50_ms"] <= row["latency"]["p99_ms"]
