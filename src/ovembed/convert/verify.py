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


def _sparse_cosine(a: SparseVector, b: SparseVector) -> float:
    keys = sorted(set(a["indices"]) | set(b["indices"]))
    if not keys:
        return 1.0
    pos = {k: i for i, k in enumerate(keys)}
    va, vb = np.zeros(len(keys)), np.zeros(len(keys))
    va[[pos[k] for k in a["indices"]]] = a["values"]
    vb[[pos[k] for k in b["indices"]]] = b["values"]
    denom = np.linalg.norm(va) * np.linalg.norm(vb)
    return float(va @ vb / denom) if denom > 0 else float(np.array_equal(va, vb))


def agreement(reference: dict, candidate) -> dict:
    """Cosine agreement per output: mean and min over the verification texts."""
    dense_cos = np.sum(reference["dense"] * candidate.dense, axis=1)
    report = {
        "texts": len(dense_cos),
        "dense_cosine_mean": round(float(dense_cos.mean()), 6),
        "dense_cosine_min": round(float(dense_cos.min()), 6),
    }
    if reference["sparse"] is not None and candidate.sparse is not None:
        cos = [_sparse_cosine(a, b) for a, b in zip(reference["sparse"], candidate.sparse)]
        diffs = [
            abs(dict(zip(a["indices"], a["values"])).get(k, 0.0) - dict(zip(b["indices"], b["values"])).get(k, 0.0))
            for a, b in zip(reference["sparse"], candidate.sparse)
            for k in set(a["indices"]) | set(b["indices"])
        ]
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
