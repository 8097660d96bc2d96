"""Export a trained model to ONNX (backbone + head) and write the model bundle.

The two graphs use the tensor names of :mod:`edge.bundle` (``spectrum`` ->
``features``; ``features`` -> ``logits``) with a dynamic batch axis.  Export goes
through torch's TorchScript-based exporter (``dynamo=False``): the dynamo
exporter needs ``onnxscript``, which the ``train`` extra does not pull in.
Before anything is written, ONNX Runtime's outputs are compared with torch's.
"""
from __future__ import annotations

import io
import logging
import platform
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from calibration.dataset import Dataset, file_sha256
from calibration.errors import BundleError
from edge.bundle import (BACKBONE_INPUT, BACKBONE_OUTPUT, HEAD_INPUT, HEAD_OUTPUT, Bundle, write_bundle)

from .complexity import count_macs
from .models import arch_of, count_parameters
from .quality import fit_warnings
from .train import TrainResult

log = logging.getLogger(__name__)

OPSET = 17
#: Largest |torch - onnxruntime| accepted on logits/features (float32 arithmetic).
EXPORT_ATOL = 1e-4


def _to_onnx(module: nn.Module, example: torch.Tensor, in_name: str, out_name: str) -> bytes:
    buf = io.BytesIO()
    module.eval()
    with warnings.catch_warnings():
        # The legacy exporter announces its deprecation on every call; it is a deliberate choice here.
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), buf, dynamo=False, input_names=[in_name], output_names=[out_name],
                          dynamic_axes={in_name: {0: "batch"}, out_name: {0: "batch"}}, opset_version=OPSET,
                          do_constant_folding=True)
    return buf.getvalue()


def export_onnx(model: nn.Module) -> tuple[bytes, bytes]:
    """Serialise ``model`` (in eval mode) as backbone and head ONNX graphs."""
    model.eval()
    points = model.params["points"]
    with torch.no_grad():
        x = torch.zeros(2, points)
        backbone = _to_onnx(model.backbone, x, BACKBONE_INPUT, BACKBONE_OUTPUT)
        head = _to_onnx(model.head, model.backbone(x), HEAD_INPUT, HEAD_OUTPUT)
    return backbone, head


def onnx_max_difference(model: nn.Module, backbone_onnx: bytes, head_onnx: bytes, x: np.ndarray) -> dict[str, float]:
    """Largest absolute difference between torch (eval) and ONNX Runtime on ``x``, per graph."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    b = ort.InferenceSession(backbone_onnx, sess_options=opts, providers=["CPUExecutionProvider"])
    h = ort.InferenceSession(head_onnx, sess_options=opts, providers=["CPUExecutionProvider"])
    x = np.ascontiguousarray(x, dtype=np.float32)
    feats = b.run([BACKBONE_OUTPUT], {BACKBONE_INPUT: x})[0]
    logits = h.run([HEAD_OUTPUT], {HEAD_INPUT: feats})[0]
    model.eval()
    with torch.no_grad():
        t_feats = model.backbone(torch.from_numpy(x))
        t_logits = model.head(t_feats)
    return {"features": float(np.abs(feats - t_feats.numpy()).max()),
            "logits": float(np.abs(logits - t_logits.numpy()).max())}


def library_versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    return {"python": platform.python_version(), "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "numpy": np.__version__}


def save_bundle(out_dir: str | Path, result: TrainResult, dataset: Dataset, *, command: str,
                options: dict[str, Any] | None = None, check_x: np.ndarray | None = None) -> Bundle:
    """Export ``result.model`` and write it as a bundle with its training provenance.

    Parameters
    ----------
    out_dir : path
        Bundle directory (replaced atomically when it exists).
    result : TrainResult
        From :func:`trainer.train.train`.
    dataset : Dataset
        The training data (its file is hashed for provenance).
    command : str
        The exact command line that produced the model.
    options : dict, optional
        The resolved CLI options, stored as given.
    check_x : numpy.ndarray, optional
        Preprocessed spectra for the torch/ONNX Runtime comparison (random
        spectra in [0, 1] when omitted).

    Raises
    ------
    BundleError
        If ONNX Runtime disagrees with torch by more than :data:`EXPORT_ATOL`.
    """
    model = result.model
    backbone, head = export_onnx(model)
    if check_x is None:
        check_x = np.random.default_rng(0).random((4, model.params["points"]), dtype=np.float32)
    diff = onnx_max_difference(model, backbone, head, check_x)
    if max(diff.values()) > EXPORT_ATOL:
        raise BundleError(f"{out_dir}: exported ONNX differs from torch by {diff} (> {EXPORT_ATOL}); not written")
    data_path = Path(dataset.path) if dataset.path is not None else None
    training = {
        "data": {"path": str(data_path) if data_path else None,
                 "resolved": str(data_path.resolve()) if data_path else None,
                 "sha256": file_sha256(data_path) if data_path else None,
                 "spectra": len(dataset), "classes": len(result.classes)},
        "command": command,
        "options": options or {},
        "config": result.config.to_dict(),
        "seed": result.config.seed,
        "versions": library_versions(),
        "platform": platform.platform(),
        "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch,
        "seconds": round(result.seconds, 1),
        "metrics": result.metrics,
        "onnx_max_abs_diff": diff,
        # Written whatever the figures, but never silently: what looks wrong travels with the bundle.
        "warnings": fit_warnings(result.metrics, len(result.classes), result.temperature),
    }
    params = dict(model.params)
    params.update(parameters=count_parameters(model), macs=count_macs(model, model.params["points"])["total"])
    if hasattr(model.backbone, "flat_size"):
        params["flat_size"] = model.backbone.flat_size
    architecture: dict[str, Any] = {"name": arch_of(model), "params": params}
    if getattr(model, "head_info", None):  # a head that is not one linear layer (trainer.shift_average)
        architecture["head"] = dict(model.head_info)
    bundle = write_bundle(out_dir, backbone_onnx=backbone, head_onnx=head, classes=list(result.classes),
                          preprocessing=result.preprocessing, feature_size=model.feature_size,
                          architecture=architecture, training=training,
                          temperature=result.temperature)
    # The support part (per-class backbone-feature statistics and exemplars of the training spectra)
    # lets `raman-edge head add` extend this model later without the training data (docs/heads.md).
    from edge.head import add_support

    bundle = add_support(bundle, dataset, out_dir)
    log.info("wrote bundle %s (%s) to %s", bundle.model_id, ", ".join(f"{k}={v:.1e}" for k, v in diff.items()),
             bundle.path)
    return bundle
