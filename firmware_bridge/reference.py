"""Real reference spectra behind the ``sim://`` spectrometer's samples.

Each simulated mineral's Raman signal is one real, baseline-corrected RRUFF spectrum
(Lafuente et al. 2015), and the samples the shipped model does not know
(``sim://?unknown=...``) are real spectra too: RRUFF minerals outside its classes and
two non-minerals measured on real instruments.  They ship in
``firmware_bridge/data/reference_spectra.npz`` with a manifest beside it
(``reference_spectra.json``: ids, files, selection rule, sha256) and a note on their
origin and terms (``REFERENCE_SPECTRA.md``).

The file is rebuilt, bit for bit, from the shared data directory with::

    python -m firmware_bridge.reference build --data ../shared/data \\
        --out firmware_bridge/data/reference_spectra.npz

Selection rule for a mineral (:func:`choose_reference`): among its spectra in Sang et
al.'s Dataset_2 (RRUFF processed files), the candidates are those measured like the
simulated instrument measures: with a 532 nm laser, on an unoriented sample (a field
instrument sees grains in random orientations, not one crystal face; every spectrum
of the mineral when it has none of these).  The reference is the candidate with the
highest cosine similarity, over the model grid (200–1591 cm⁻¹), to the point-wise
median of all the mineral's spectra, each max-normalised: its most typical
spectrum.  Ties go to the smaller file name.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import sys
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np

from calibration.errors import InputError, RamanEdgeError

log = logging.getLogger(__name__)

DATA_DIR = Path(__file__).with_name("data")
REFERENCE_PATH = DATA_DIR / "reference_spectra.npz"
MANIFEST_FORMAT = "raman-edge.reference-spectra"
MANIFEST_VERSION = 1

#: The stored axis: Sang et al.'s grid, 30–1599 cm⁻¹ at 1 cm⁻¹.
AXIS_START_CM1 = 30.0
AXIS_POINTS = 1570
#: Intensities are stored max-normalised as unsigned 16-bit integers (1.5e-5 steps).
QUANT_MAX = 65535
#: The model's input grid, over which similarity is judged.
GRID_CM1 = (200.0, 1591.0)
#: The simulated instrument's excitation (firmware_bridge/data/sim_calibration.json).
LASER_NM = "532"

CITATION = ("Lafuente B., Downs R. T., Yang H., Stone N. (2015) The power of databases: the RRUFF "
            "project. In: Highlights in Mineralogical Crystallography, T. Armbruster and R. M. Danisi, eds. "
            "Berlin, Germany, W. De Gruyter, pp 1-30.")
INSTRUMENTS_CITATION = ("Arcadia Science (2025) 2025-raman-spectrometer-comparison, data/ "
                        "(github.com/Arcadia-Science/2025-raman-spectrometer-comparison), MIT licence, "
                        "Copyright (c) 2024 Arcadia Science.")

SANG_D2 = Path("rruff-sang") / "dataset_2_dev.npz"

#: Band-table bands at least this strong (relative) are reported when the reference lacks them.
MISSING_BAND_HEIGHT = 0.1

#: RRUFF minerals outside the shipped model's classes, offered as ``unknown`` samples.
UNKNOWN_MINERALS = ("Adamite", "Aenigmatite", "Akermanite")


@dataclass(frozen=True)
class _Organic:
    label: str
    path: Path
    low_cm1: float  # below this the export shows the instrument's edge filter, not the sample
    what: str


#: Non-mineral samples from real instruments: Horiba's axis is the best-calibrated of the
#: five (docs/calibration.md); only the Renishaw maps hold the Chlamydomonas carotenoid bands.
UNKNOWN_ORGANICS = (
    _Organic("acetonitrile", Path("instruments") / "Horiba_MacroRAM" / "acetonitrile.txt", 200.0,
             "acetonitrile (CH3CN), Horiba MacroRAM, 785 nm"),
    _Organic("Chlamydomonas", Path("instruments") / "Renishaw_Qontor" / "CC-124_TAP_plate_5x_3_points.txt", 720.0,
             "Chlamydomonas reinhardtii CC-124 cells (carotenoid bands), Renishaw Qontor, mean of 3 points"),
)


def axis_cm1() -> np.ndarray:
    """The stored spectra's Raman-shift axis (cm⁻¹)."""
    return AXIS_START_CM1 + np.arange(AXIS_POINTS, dtype=np.float64)


@dataclass(frozen=True)
class Reference:
    """One stored reference spectrum.

    Attributes
    ----------
    label : str
        Truth label the simulator reports: a mineral name, or ``unknown:<name>``.
    intensities : numpy.ndarray
        float64 on :func:`axis_cm1`, maximum 1, zero outside the measured range.
    source : str
        Where it came from (RRUFF file name, or instrument export).
    rruff_id : str
        RRUFF sample id (empty for non-RRUFF spectra).
    missing_bands_cm1 : tuple of float
        Bands of the mineral's band table (relative height ≥ :data:`MISSING_BAND_HEIGHT`)
        outside the reference's measured range: the simulated sample lacks them.
    """

    label: str
    intensities: np.ndarray
    source: str
    rruff_id: str
    missing_bands_cm1: tuple[float, ...] = ()

    @property
    def unknown(self) -> bool:
        return self.label.startswith("unknown:")

    @property
    def strongest(self) -> float:
        """Raman shift (cm⁻¹) of the highest point."""
        return float(axis_cm1()[int(np.argmax(self.intensities))])

    def binned(self, edges_cm1: np.ndarray) -> np.ndarray:
        """Mean intensity between consecutive ``edges_cm1`` (a detector's pixel edges).

        Bin averages, not point samples, so that a narrow band keeps its area on a
        coarser pixel; outside the stored range the signal is zero.
        """
        x = axis_cm1()
        # Cumulative integral at the stored points' bin edges (each point covers ±0.5 cm⁻¹).
        cum = np.concatenate(([0.0], np.cumsum(self.intensities)))
        e = np.asarray(edges_cm1, dtype=np.float64)
        c = np.interp(e, np.concatenate((x - 0.5, [x[-1] + 0.5])), cum)
        return np.diff(c) / np.diff(e)


# -- the shipped file ----------------------------------------------------------------
def manifest_path(npz: Path) -> Path:
    return npz.with_suffix(".json")


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_references(path: Path = REFERENCE_PATH) -> dict[str, Reference]:
    """Every stored reference by label, checked against its manifest.

    Raises
    ------
    InputError
        Missing or unreadable file, a sha256 that differs from the manifest's, or
        labels that do not match it.
    """
    path = Path(path)
    try:
        st = path.stat()
    except OSError as e:
        raise InputError(f"{path}: cannot read the reference spectra: {e}") from None
    # Keyed by size and time as well, so that a rewritten file is read (and checked) again.
    return _load(str(path), st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=4)
def _load(name: str, _size: int, _mtime_ns: int) -> dict[str, Reference]:
    path = Path(name)
    man = manifest_path(path)
    try:
        manifest = json.loads(man.read_text(encoding="utf-8"))
        blob = path.read_bytes()
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: cannot read the reference spectra or their manifest: {e}") from None
    if manifest.get("format") != MANIFEST_FORMAT or manifest.get("version") != MANIFEST_VERSION:
        raise InputError(f"{man}: not a {MANIFEST_FORMAT} v{MANIFEST_VERSION} manifest")
    digest = hashlib.sha256(blob).hexdigest()
    if digest != manifest.get("sha256"):
        want = str(manifest.get("sha256"))[:12]
        raise InputError(f"{path}: sha256 {digest[:12]}… differs from its manifest's {want}…")
    try:
        with np.load(io.BytesIO(blob), allow_pickle=False) as d:
            labels = [str(s) for s in d["labels"]]
            q = d["spectra"]
    except (OSError, KeyError, ValueError) as e:
        raise InputError(f"{path}: not a reference spectra file: {e}") from None
    entries = manifest.get("spectra", [])
    if [e.get("label") for e in entries] != labels or q.shape != (len(labels), AXIS_POINTS):
        raise InputError(f"{path}: labels or shape {q.shape} do not match {man}")
    return {lab: Reference(lab, q[i].astype(np.float64) / QUANT_MAX, str(e["file"]), str(e.get("rruff_id", "")),
                           tuple(float(b) for b in e.get("missing_bands_cm1", ())))
            for i, (lab, e) in enumerate(zip(labels, entries))}


def unknown_labels(path: Path = REFERENCE_PATH) -> tuple[str, ...]:
    """Labels of the stored samples that are none of the simulated minerals."""
    return tuple(k for k, r in load_references(path).items() if r.unknown)


# -- building it -----------------------------------------------------------------------
def _measured_range(y: np.ndarray, x: np.ndarray) -> tuple[float, float]:
    nz = np.nonzero(y > 0)[0]
    return (float(x[nz[0]]), float(x[nz[-1]])) if nz.size else (np.inf, -np.inf)


def is_candidate(file: str) -> bool:
    """Whether a RRUFF file name says 532 nm and an unoriented sample (the rule's preference)."""
    f = file.split("__")
    return len(f) > 5 and f[3] == LASER_NM and f[5] == "unoriented"


def choose_reference(spectra: np.ndarray, files: Sequence[str], wavenumbers: np.ndarray) -> int:
    """Index of the reference spectrum among one mineral's spectra (the module's rule).

    Parameters
    ----------
    spectra : numpy.ndarray
        ``(n, points)`` baseline-corrected spectra of one mineral, zero outside each one's measured range.
    files : sequence of str
        Their RRUFF file names (laser, orientation, tie-break).
    wavenumbers : numpy.ndarray
        Their common axis in cm⁻¹.
    """
    x = np.asarray(wavenumbers, dtype=np.float64)
    y = np.asarray(spectra, dtype=np.float64)
    y = y / np.maximum(y.max(axis=1, keepdims=True), 1e-12)
    cand = np.array([i for i, f in enumerate(files) if is_candidate(f)] or list(range(len(files))), dtype=int)
    lo, hi = GRID_CM1
    g = (x >= lo) & (x <= hi)
    med = np.median(y[:, g], axis=0)
    c = y[cand][:, g]
    sim = (c @ med) / (np.linalg.norm(c, axis=1) * np.linalg.norm(med) + 1e-12)
    ties = cand[sim >= sim.max() - 1e-12]
    return int(min(ties, key=lambda i: files[i]))


def _quantise(y: np.ndarray) -> np.ndarray:
    y = np.clip(np.asarray(y, dtype=np.float64), 0.0, None)  # emitted light is never negative
    return np.rint(y / y.max() * QUANT_MAX).astype(np.uint16)


def _organic_spectrum(data: Path, org: _Organic) -> np.ndarray:
    """A non-mineral export, baseline removed (pybaselines arPLS), on the stored axis."""
    from calibration.baseline import baseline  # host-side build only: needs pybaselines
    from calibration.readers import read

    res = read(data / org.path)
    got = res.spectra if hasattr(res, "spectra") else res
    spectra = got if isinstance(got, list) else [got]
    s0 = spectra[0].ascending()
    y = np.mean([s.ascending().intensities for s in spectra], axis=0)
    keep = (s0.axis >= org.low_cm1) & (s0.axis <= axis_cm1()[-1] + 5)
    x, y = s0.axis[keep], y[keep]
    y = y - baseline(y, x, "arpls")
    out = np.interp(axis_cm1(), x, y, left=0.0, right=0.0)
    return np.clip(out, 0.0, None)


def _specimen(file: str) -> str:
    return file.split("__")[1].split("-")[0] if file.count("__") >= 2 else ""


def build(data: Path, out: Path, minerals: Sequence[str] | None = None) -> dict:
    """Build the reference spectra file and its manifest from the shared data directory.

    Parameters
    ----------
    data : pathlib.Path
        The shared data directory (holding ``rruff-sang/`` and ``instruments/``).
    out : pathlib.Path
        The ``.npz`` to write; the manifest goes beside it (same name, ``.json``).
    minerals : sequence of str, optional
        The simulated minerals (default: every mineral of :mod:`firmware_bridge.minerals`).

    Returns
    -------
    dict
        The manifest written.
    """
    from .minerals import available_minerals, get_mineral

    data, out = Path(data), Path(out)
    src = data / SANG_D2
    try:
        d = np.load(src, allow_pickle=False)
        X, labels, files, wn = d["spectra"], d["labels"], d["files"], d["wavenumbers"].astype(np.float64)
    except (OSError, KeyError, ValueError) as e:
        raise InputError(f"{src}: cannot read Sang Dataset_2: {e}") from None
    if wn.size != AXIS_POINTS or wn[0] != AXIS_START_CM1 or not np.allclose(np.diff(wn), 1.0):
        raise InputError(f"{src}: axis is not {AXIS_START_CM1:g}-{AXIS_START_CM1 + AXIS_POINTS - 1:g} cm-1 at 1 cm-1")
    names = list(minerals or available_minerals())
    rows: list[np.ndarray] = []
    entries: list[dict] = []
    for name, label in [(m, m) for m in names] + [(m, f"unknown:{m}") for m in UNKNOWN_MINERALS]:
        idx = np.nonzero(labels == name)[0]
        if idx.size == 0:
            raise InputError(f"{src}: no spectra of {name!r}")
        k = idx[choose_reference(X[idx], [str(f) for f in files[idx]], wn)]
        f = str(files[k])
        rows.append(_quantise(X[k]))
        lo, hi = _measured_range(X[k].astype(np.float64), wn)
        entry = {"label": label, "mineral": name, "rruff_id": _specimen(f), "file": f,
                 "laser_nm": f.split("__")[3], "measured_cm1": [lo, hi], "candidates": int(idx.size),
                 "source": str(SANG_D2), "citation": "lafuente2015"}
        if label == name:
            m = get_mineral(name)
            entry["missing_bands_cm1"] = [float(b) for b, h in zip(m.positions, m.heights)
                                          if h >= MISSING_BAND_HEIGHT and not lo <= b <= hi]
        entries.append(entry)
    for org in UNKNOWN_ORGANICS:
        y = _organic_spectrum(data, org)
        rows.append(_quantise(y))
        lo, hi = _measured_range(y, axis_cm1())
        entries.append({"label": f"unknown:{org.label}", "mineral": "", "rruff_id": "", "file": str(org.path),
                        "what": org.what, "measured_cm1": [lo, hi], "source": str(org.path),
                        "citation": "arcadia2025"})
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(_npz_bytes({"labels": np.array([e["label"] for e in entries]), "spectra": np.stack(rows)}))
    manifest = {
        "format": MANIFEST_FORMAT, "version": MANIFEST_VERSION,
        "axis_cm1": {"start": AXIS_START_CM1, "step": 1.0, "points": AXIS_POINTS},
        "encoding": f"uint16, each spectrum divided by its maximum and scaled to {QUANT_MAX}",
        "rule": (f"per mineral, among its Sang Dataset_2 spectra taken at {LASER_NM} nm on an unoriented sample "
                 "(all its spectra if none), the one with the highest cosine similarity over "
                 f"{GRID_CM1[0]:g}-{GRID_CM1[1]:g} cm-1 to the point-wise median of all its spectra "
                 "(each max-normalised); ties to the smaller file name"),
        "built_from": {str(SANG_D2): file_sha256(src),
                       **{str(o.path): file_sha256(data / o.path) for o in UNKNOWN_ORGANICS}},
        "command": "python -m firmware_bridge.reference build --data ../shared/data "
                   "--out firmware_bridge/data/reference_spectra.npz",
        # The organic spectra's baselines come from pybaselines: another version may change their last bits.
        "built_with": {"numpy": np.__version__, "pybaselines": _version("pybaselines")},
        "citations": {"lafuente2015": CITATION, "arcadia2025": INSTRUMENTS_CITATION},
        "sha256": file_sha256(out),
        "spectra": entries,
    }
    manifest_path(out).write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    _load.cache_clear()
    return manifest


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "absent"


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An ``.npz`` with fixed zip timestamps, so that the same arrays give the same bytes."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, arr in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            b = io.BytesIO()
            np.lib.format.write_array(b, np.ascontiguousarray(arr), allow_pickle=False)
            z.writestr(info, b.getvalue(), compresslevel=9)
    return buf.getvalue()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m firmware_bridge.reference",
                                description="Build the sim:// reference spectra from the shared data.")
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="write the .npz and its manifest (.json beside it)")
    b.add_argument("--data", type=Path, required=True, help="the shared data directory (rruff-sang/, instruments/)")
    b.add_argument("--out", type=Path, default=REFERENCE_PATH, help="output .npz (default: the shipped file)")
    args = p.parse_args(argv)
    try:
        m = build(args.data, args.out)
    except (RamanEdgeError, OSError) as e:
        print(f"python -m firmware_bridge.reference: error: {e}", file=sys.stderr)
        return 2
    print(f"{args.out}: {len(m['spectra'])} spectra, {args.out.stat().st_size} bytes, sha256 {m['sha256']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
