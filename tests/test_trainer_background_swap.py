"""Background swap (trainer.augment: p_background_swap, BackgroundBank) and the imprinted contrastive head."""
import numpy as np
import pytest

from calibration.errors import ConfigError
from trainer.augment import AugmentConfig, Augmenter, BackgroundBank, split_background
from trainer.synthetic import lorentzian

pytest.importorskip("pybaselines")

AXIS = np.arange(200.0, 1200.0, 1.0)
ONLY_SWAP = AugmentConfig(p_shift=0.0, p_scale=0.0, p_baseline=0.0, p_noise=0.0, p_background_swap=1.0,
                          background_factor=(1.0, 1.0))


def _peaks(centres):
    return sum(lorentzian(AXIS, c, 6.0) for c in centres)


def _pair():
    t = (AXIS - AXIS[0]) / (AXIS[-1] - AXIS[0])
    a = _peaks([400, 700, 1000]) + 0.05                      # nearly no fluorescence
    b = _peaks([300, 900]) + 20.0 * np.exp(-((t - 0.8) / 0.4) ** 2)  # a strong fluorescence hump
    return np.stack([a, b]), t


def test_swap_puts_the_peaks_on_the_donors_real_background():
    spectra, t = _pair()
    back, raman = split_background(spectra, AXIS)
    assert np.corrcoef(back[1], spectra[1] - _peaks([300, 900]))[0, 1] > 0.99  # asls finds the hump
    donors = BackgroundBank.from_spectra(spectra[1:], AXIS)                    # b donates to a
    out = Augmenter(ONLY_SWAP, np.random.default_rng(0), donors=donors)(spectra[:1], AXIS)[0]
    new_back, new_raman = split_background(out[None], AXIS)
    # a's bands are kept where they were ...
    assert np.corrcoef(new_raman[0], raman[0])[0, 1] > 0.98
    # ... on b's hump, at b's background-to-Raman ratio (factor 1)
    assert np.corrcoef(new_back[0], back[1])[0, 1] > 0.98
    ratio_b = back[1].mean() / np.abs(raman[1]).mean()
    assert new_back[0].mean() / np.abs(raman[0]).mean() == pytest.approx(ratio_b, rel=0.15)
    assert out.min() >= 0.0


def test_swap_within_a_batch_is_seeded_and_off_by_default():
    spectra, _ = _pair()
    cfg = ONLY_SWAP.replace(background_factor=(0.2, 3.0))
    a = Augmenter(cfg, np.random.default_rng(3))(spectra, AXIS)
    b = Augmenter(cfg, np.random.default_rng(3))(spectra, AXIS)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, spectra)
    # Off: the other effects draw exactly what they drew before the swap existed.
    base = AugmentConfig(p_shift=1.0, p_noise=1.0, p_background_swap=0.0)
    plain = Augmenter(base, np.random.default_rng(4))(spectra, AXIS)
    legacy_child = np.random.default_rng(4).spawn(1)[0].random(5)
    assert np.array_equal(Augmenter(base, np.random.default_rng(4)).extra_rng.random(5), legacy_child)
    np.testing.assert_array_equal(plain, Augmenter(base, np.random.default_rng(4))(spectra, AXIS))


def test_bank_merge_interpolates_onto_the_first_axis():
    spectra, _ = _pair()
    bank = BackgroundBank.from_spectra(spectra, AXIS)
    coarse_axis = AXIS[::2]
    other = BackgroundBank.from_spectra(spectra[:, ::2], coarse_axis)
    merged = BackgroundBank.merge([bank, other])
    assert len(merged) == 4 and merged.shapes.shape == (4, AXIS.size)
    assert np.corrcoef(merged.shapes[1], merged.shapes[3])[0, 1] > 0.99


def test_background_factor_must_be_positive():
    with pytest.raises(ConfigError, match="background_factor"):
        AugmentConfig(background_factor=(0.0, 1.0))
    with pytest.raises(ConfigError, match="p_background_swap"):
        AugmentConfig(p_background_swap=1.5)


def test_imprinted_head_is_the_nearest_class_mean_rule():
    torch = pytest.importorskip("torch")
    from trainer.config import SemiConfig, TrainConfig
    from trainer.semi import _build, imprint_head

    class Data:  # the fields imprint_head reads
        classes = ["a", "b", "c"]
    rng = np.random.default_rng(0)
    cfg = TrainConfig(pool=4, n_pool=4, dense=16, threads=1).check()
    model = _build(cfg, 256, 3).eval()
    Data.x_train_clean = rng.random((9, 256)).astype(np.float32)
    Data.y_all = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2])
    Data.train_idx = np.arange(9)
    imprint_head(model, Data)
    with torch.no_grad():
        f = model.backbone(torch.from_numpy(Data.x_train_clean)).double()
        logits = model.head(f.float()).double()
    mu = torch.stack([f[Data.y_all == k].mean(0) for k in range(3)])
    nearest = torch.cdist(f, mu).argmin(1)
    assert torch.equal(logits.argmax(1), nearest)
    with pytest.raises(ConfigError, match="head_init"):
        SemiConfig(head_init="zeros").check()


# --- band gain (p_band_gain): relative band intensities of the Raman part -----------------------------------
ONLY_GAIN = AugmentConfig(p_shift=0.0, p_scale=0.0, p_baseline=0.0, p_noise=0.0, p_background_swap=0.0,
                          p_band_gain=1.0, band_gain=(0.5, 0.5))


def test_band_gain_changes_band_ratios_not_positions_or_background():
    spectra, _ = _pair()
    out = Augmenter(ONLY_GAIN, np.random.default_rng(1))(spectra, AXIS)
    back, raman = split_background(spectra, AXIS)
    new_back, new_raman = split_background(out, AXIS)
    for i, centres in enumerate(([400, 700, 1000], [300, 900])):
        idx = [int(c - AXIS[0]) for c in centres]
        assert all(np.argmax(out[i, j - 8:j + 9]) == 8 for j in idx)   # every band stays where it was
        before, after = raman[i, idx], new_raman[i, idx]
        gains = after / before
        assert np.all((gains > np.exp(-0.55)) & (gains < np.exp(0.55)))  # bounded by exp(±a)
        assert gains.max() / gains.min() > 1.05                           # ratios between bands moved
        # the background is untouched (asls sees the same one, within a few % of the bands' height)
        assert np.abs(new_back[i] - back[i]).max() < 0.05 * raman[i].max()
    assert out.min() >= 0.0


def test_band_gains_are_smooth_bounded_and_seeded():
    from trainer.augment import band_gains

    amps = np.array([0.0, 0.3, 0.5])
    g = band_gains(3, AXIS, np.random.default_rng(5), amps)
    np.testing.assert_array_equal(g[0], 1.0)                                # a = 0: no change
    for a, row in zip(amps[1:], g[1:]):
        assert np.log(row).max() == pytest.approx(a) or -np.log(row).min() == pytest.approx(a)
        assert np.abs(np.diff(np.log(row))).max() < 2 * np.pi * a / 150.0 * 3  # no band-scale wiggles
    np.testing.assert_array_equal(g, band_gains(3, AXIS, np.random.default_rng(5), amps))


def test_band_gain_off_draws_nothing_new_and_is_validated():
    spectra, _ = _pair()
    cfg = ONLY_SWAP.replace(background_factor=(0.2, 3.0))
    a = Augmenter(cfg, np.random.default_rng(3))(spectra, AXIS)
    b = Augmenter(cfg.replace(p_band_gain=0.0, band_gain=(0.0, 2.0)), np.random.default_rng(3))(spectra, AXIS)
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ConfigError, match="p_band_gain"):
        AugmentConfig(p_band_gain=1.5)
    with pytest.raises(ConfigError, match="band_gain"):
        AugmentConfig(band_gain=(0.5, 0.1))


def test_add_backgrounds_puts_a_real_background_under_processed_spectra():
    from trainer.augment import add_backgrounds

    spectra, t = _pair()
    donors = BackgroundBank.from_spectra(spectra[1:], AXIS)             # b's hump is the only donor
    processed = np.stack([_peaks([400, 700, 1000]), _peaks([350, 800])])  # background-free
    out = add_backgrounds(processed, AXIS, donors, np.random.default_rng(0), factor=(1.0, 1.0))
    assert out.shape == processed.shape and np.isclose(out.max(axis=1), 1.0).all() and out.min() >= 0.0
    for row, p in zip(out, processed):
        # out = (p + c * hump) / max: solve for the scale of p and c by least squares; the fit is exact
        design = np.stack([p, donors.shapes[0]], axis=1)
        coef, *_ = np.linalg.lstsq(design, row, rcond=None)
        np.testing.assert_allclose(design @ coef, row, atol=1e-9)
        # the donor's background-to-Raman ratio, on this spectrum's Raman level (factor 1)
        assert coef[1] / coef[0] == pytest.approx(np.abs(p).mean(), rel=1e-6)
    assert add_backgrounds(processed[:0], AXIS, donors, np.random.default_rng(0)).shape == (0, AXIS.size)
