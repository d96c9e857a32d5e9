"""The accuracy gate: the converted model against the fp32 PyTorch reference on a built-in set."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ovembed.engine.outputs import SparseVector, colbert_vectors, l2_normalize, lexical_weights


@dataclass(frozen=True)
class GateThresholds:
    dense_cosine_mean: float = 0.99
    dense_cosine_min: float = 0.97


def reference_embeddings(encoder, ids: list[list[int]], special_ids: list[int], progress=None) -> dict:
    """fp32 PyTorch outputs, one text at a time (no padding to disagree about)."""
    dense, sparse, colbert = [], [], []
    with torch.no_grad():
        for row in progress(ids) if progress else ids:
            input_ids = torch.tensor([row], dtype=torch.int64)
            outs = encoder.embed_ids(input_ids, torch.ones_like(input_ids))
            dense.append(outs[0][0].numpy())
            if len(outs) == 3:
                sparse.append(lexical_weights(outs[1][0].numpy(), row, special_ids))
                colbert.append(colbert_vectors(outs[2][0].numpy(), len(row)))
    return {"dense": l2_normalize(np.stack(dense)), "sparse": sparse or None, "colbert": colbert or None}


def _sparse_agreement(a: SparseVector, b: SparseVector) -> tuple[float, float]:
    """(cosine, largest absolute weight difference) of two lexical-weight vectors; a missing id weighs 0."""
    wa, wb = dict(zip(a["indices"], a["values"])), dict(zip(b["indices"], b["values"]))
    keys = sorted(wa.keys() | wb.keys())
    if not keys:
        return 1.0, 0.0
    va = np.array([wa.get(k, 0.0) for k in keys])
    vb = np.array([wb.get(k, 0.0) for k in keys])
    denom = np.linalg.norm(va) * np.linalg.norm(vb)
    cosine = float(va @ vb / denom) if denom > 0 else float(np.array_equal(va, vb))
    return cosine, float(np.abs(va - vb).max())


def agreement(reference: dict, candidate) -> dict:
    """Cosine agreement per output: mean and min over the verification texts."""
    dense_cos = np.sum(reference["dense"] * candidate.dense, axis=1)
    report = {
        "texts": len(dense_cos),
        "dense_cosine_mean": round(float(dense_cos.mean()), 6),
        "dense_cosine_min": round(float(dense_cos.min()), 6),
    }
    if reference["sparse"] is not None and candidate.sparse is not None:
        pairs = [_sparse_agreement(a, b) for a, b in zip(reference["sparse"], candidate.sparse)]
        cos, diffs = [p[0] for p in pairs], [p[1] for p in pairs]
        report["sparse_cosine_mean"] = round(float(np.mean(cos)), 6)
        report["sparse_cosine_min"] = round(float(np.min(cos)), 6)
        report["sparse_weight_max_abs_diff"] = round(float(max(diffs, default=0.0)), 6)
    if reference["colbert"] is not None and candidate.colbert is not None:
        token_cos = np.concatenate([np.sum(a * b, axis=1) for a, b in zip(reference["colbert"], candidate.colbert)])
        report["colbert_cosine_mean"] = round(float(token_cos.mean()), 6)
        report["colbert_cosine_min"] = round(float(token_cos.min()), 6)
    return report


def gate_failures(report: dict, thresholds: GateThresholds) -> list[str]:
    failures = []
    if not report["dense_cosine_mean"] >= thresholds.dense_cosine_mean:
        failures.append(f"dense cosine mean {report['dense_cosine_mean']:.4f} < {thresholds.dense_cosine_mean}")
    if not report["dense_cosine_min"] >= thresholds.dense_cosine_min:
        failures.append(f"dense cosine min {report['dense_cosine_min']:.4f} < {thresholds.dense_cosine_min}")
    return failures
