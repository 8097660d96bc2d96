"""edge.matcher: cosine reference matching on backbone features, in ONNX Runtime and numpy."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from calibration.errors import BundleError, SpectrumError
from calibration.preprocess import Preprocessor
from calibration.spectrum import Spectrum
from edge.bundle import load_bundle
from edge.matcher import (MATCHER_INPUT, ReferenceMatcher, cosine_similarity, embed, reference_matcher_onnx)

from .conftest import BANDS, synth


def _session(model: bytes):
    import onnxruntime as ort

    return ort.InferenceSession(model, providers=["CPUExecutionProvider"])


def test_onnx_graph_equals_numpy_cosine(rng: np.random.Generator) -> None:
    refs = rng.normal(size=(37, 16)) * rng.uniform(0.1, 10, size=(37, 1))  # norms differ per row
    q = rng.normal(size=(5, 16)).astype(np.float32)
    sim, scores, idx = _session(reference_matcher_onnx(refs, top=4)).run(None, {MATCHER_INPUT: q})
    want = cosine_similarity(q, refs)
    np.testing.assert_allclose(sim, want, atol=1e-5)
    order = np.argsort(-want, axis=1, kind="stable")[:, :4]
    np.testing.assert_array_equal(idx, order)
    np.testing.assert_allclose(scores, np.take_along_axis(want, order, axis=1), atol=1e-5)
    assert np.all(np.abs(sim) <= 1 + 1e-5)


def test_top_is_clipped_to_k_and_zero_query_gives_zero_similarity(rng: np.random.Generator) -> None:
    refs = rng.normal(size=(3, 8))
    sim, scores, idx = _session(reference_matcher_onnx(refs, top=10)).run(
        None, {MATCHER_INPUT: np.zeros((2, 8), np.float32)})
    assert scores.shape == idx.shape == (2, 3)
    assert np.all(np.isfinite(sim)) and np.all(sim == 0)


@pytest.mark.parametrize("refs, what", [
    (np.zeros((0, 4)), "k >= 1"),
    (np.ones(4), "shape"),
    (np.array([[1.0, np.nan], [1.0, 0.0]]), "reference 0 contains NaN"),
    (np.array([[1.0, 1.0], [0.0, 0.0]]), "reference 1 has a zero feature vector"),
])
def test_bad_references_are_named(refs: np.ndarray, what: str) -> None:
    with pytest.raises(BundleError, match=what):
        reference_matcher_onnx(refs)


def test_bad_top_is_named() -> None:
    with pytest.raises(BundleError, match="top must be >= 1"):
        reference_matcher_onnx(np.eye(3), top=0)


def _spectra(minerals: list[str], n: int, rng: np.random.Generator, pre: Preprocessor) -> tuple[np.ndarray, list[str]]:
    wn = np.arange(200.0, 1592.0, 1.0)
    x, y = [], []
    for m in minerals:
        for _ in range(n):
            x.append(pre(Spectrum(synth(m, wn, rng, shift=rng.normal(0, 1.5)), wn, "raman_shift")))
            y.append(m)
    return np.stack(x), y


def test_matches_the_right_class_with_several_references_per_class(test_bundle: Path,
                                                                   rng: np.random.Generator) -> None:
    bundle = load_bundle(test_bundle)
    minerals = list(BANDS)
    x_ref, y_ref = _spectra(minerals, 3, rng, bundle.preprocessor)
    x_q, y_q = _spectra(minerals, 4, rng, bundle.preprocessor)
    m = ReferenceMatcher.from_spectra(bundle, x_ref, y_ref, top_k=3, threads=1)
    assert m.size == 3 * len(minerals)
    matches = m.match(x_q)
    assert [r.label for r in matches] == y_q
    for r in matches:
        assert len(r.classes) == 3 and len(set(r.classes)) == 3  # distinct classes despite 3 refs each
        assert list(r.similarities) == sorted(r.similarities, reverse=True)
        assert y_ref[r.references[0]] == r.label
    # the ONNX path agrees with numpy cosine + argmax on the same features
    feats = embed(bundle, x_q)
    best = np.argmax(cosine_similarity(feats, embed(bundle, x_ref)), axis=1)
    assert [y_ref[i] for i in best] == [r.label for r in matches]


def test_matcher_inputs_are_checked(test_bundle: Path, rng: np.random.Generator) -> None:
    bundle = load_bundle(test_bundle)
    f = bundle.feature_size
    with pytest.raises(BundleError, match=rf"\(k, {f}\) is needed"):
        ReferenceMatcher(bundle, rng.normal(size=(4, f + 1)), list("abcd"))
    with pytest.raises(BundleError, match="3 labels for 4 references"):
        ReferenceMatcher(bundle, rng.normal(size=(4, f)), list("abc"))
    m = ReferenceMatcher(bundle, rng.normal(size=(4, f)), list("abcd"))
    with pytest.raises(SpectrumError, match="expects"):
        m.match(np.zeros((2, 10), np.float32))
    with pytest.raises(SpectrumError, match="backbone features"):
        m.match_features(np.zeros((2, f + 3), np.float32))
