"""Classifier.classify: top-k on logits then normalising only those equals a full softmax + stable sort."""
from __future__ import annotations


import numpy as np
import pytest

from edge.bundle import load_bundle, write_bundle
from edge.classifier import Classifier, softmax, top_indices
from edge.head import linear_head_onnx


@pytest.mark.parametrize("n_cls", [1, 2, 3, 5, 13, 200, 5000])
def test_top_indices_equal_a_stable_full_sort(n_cls):
    rng = np.random.default_rng(n_cls)
    z = rng.normal(size=(6, n_cls)).astype(np.float32)
    z[0] = 0.5                      # all tied: lowest indices first
    z[1] = np.round(z[1])           # many ties around the k-th value
    for k in (1, 3, 10):
        got = top_indices(z, k)
        want = np.argsort(-z, axis=1, kind="stable")[:, :min(k, n_cls)]
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("n_cls,temperature", [(4, 1.0), (300, 1.0), (3000, 0.7)])
def test_classify_matches_full_softmax(tmp_path, n_cls, temperature):
    base = load_bundle()
    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.5, (n_cls, base.feature_size)).astype(np.float32)
    b = rng.normal(0, 0.1, n_cls).astype(np.float32)
    bundle = write_bundle(tmp_path / "m", backbone_onnx=base.backbone_path.read_bytes(),
                          head_onnx=linear_head_onnx(w, b), classes=[f"c{i}" for i in range(n_cls)],
                          preprocessing=base.manifest["preprocessing"], feature_size=base.feature_size,
                          architecture={"name": "test", "params": {}}, training={}, temperature=temperature)
    clf = Classifier(bundle, top_k=3)
    x = rng.random((5, bundle.input_points), dtype=np.float32)
    preds = clf.classify(x)
    proba = softmax(clf.logits(x), temperature)
    order = np.argsort(-proba, axis=1, kind="stable")[:, :min(3, n_cls)]
    for p, o, row in zip(preds, order, proba):
        assert list(p.classes) == [f"c{i}" for i in o]
        np.testing.assert_allclose(p.probabilities, row[o], rtol=1e-5, atol=1e-7)
    assert preds == clf.top(proba) or all(  # same answer through the probability route
        q.classes == r.classes and np.allclose(q.probabilities, r.probabilities, rtol=1e-5)
        for q, r in zip(preds, clf.top(proba)))


def test_in_graph_selection_is_used_and_agrees_with_numpy(tmp_path):
    """The selection runs inside ONNX Runtime (TopK, ReduceLogSumExp); the numpy fallback gives the same answer."""
    base = load_bundle()
    n_cls = 50
    rng = np.random.default_rng(1)
    w = rng.normal(0, 0.5, (n_cls, base.feature_size)).astype(np.float32)
    w[10:20] = w[5]  # classes 5 and 10..19 tie exactly: lower index first, as the stable sort
    x = rng.random((3, base.input_points), dtype=np.float32)
    feats = base.backbone_session.run(["features"], {"spectrum": x})[0]
    b = np.zeros(n_cls, np.float32)
    # ... and they win, by more than any feature-driven logit (ReLU features are unbounded)
    b[[5] + list(range(10, 20))] = 50.0 + 2 * float(np.abs(feats @ w.T).max())
    bundle = write_bundle(tmp_path / "m", backbone_onnx=base.backbone_path.read_bytes(),
                          head_onnx=linear_head_onnx(w, b), classes=[f"c{i}" for i in range(n_cls)],
                          preprocessing=base.manifest["preprocessing"], feature_size=base.feature_size,
                          architecture={"name": "test", "params": {}}, training={}, temperature=1.3)
    in_graph = Classifier(bundle, top_k=4)
    assert in_graph._selector is not None
    numpy_path = Classifier(bundle, top_k=4)
    numpy_path._selector = None
    for p, q in zip(in_graph.classify(x), numpy_path.classify(x)):
        assert p.classes == q.classes == ("c5", "c10", "c11", "c12")
        np.testing.assert_allclose(p.probabilities, q.probabilities, rtol=1e-5)
