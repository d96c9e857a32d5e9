"""Precision recipes: fp32, fp16, int8-weights (optimum-cli --weight-format int8) and static int8 (NNCF)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ovembed.manifest import MODEL_XML, TOKEN_TABLE, TOKEN_TABLE_SCALES


def quantize_table(table: np.ndarray, precision: str) -> dict[str, np.ndarray]:
    """The vocabulary table as stored: int8 rows with one float32 scale per row, or fp16/fp32 rows."""
    if precision in ("int8", "int8-weights"):
        scales = np.abs(table).max(axis=1) / 127.0
        scales[scales == 0] = 1.0
        rows = np.clip(np.rint(table / scales[:, None]), -127, 127).astype(np.int8)
        return {TOKEN_TABLE: rows, TOKEN_TABLE_SCALES: scales.astype(np.float32)}
    if precision == "fp16":
        return {TOKEN_TABLE: table.astype(np.float16)}
    return {TOKEN_TABLE: table.astype(np.float32)}


def lookup(tables: dict[str, np.ndarray], ids: np.ndarray) -> np.ndarray:
    rows = tables[TOKEN_TABLE][ids].astype(np.float32)
    if TOKEN_TABLE_SCALES in tables:
        rows *= tables[TOKEN_TABLE_SCALES][ids][..., None]
    return rows


FLOAT_OPS = "ScaledDotProductAttention"  # ops whose inputs the int8 recipe leaves float
# What each precision's recipe is, recorded in the manifest: `quantize --if-changed` makes a folder again when its
# recipe is not the current one.
RECIPES = {"int8": "nncf static int8, mixed preset, attention float", "int8-weights": "nncf int8_asym weights",
           "fp16": "fp16 weights", "fp32": "fp32"}
# What a folder whose manifest records no recipe was made with: only static int8 has changed since.
UNRECORDED_RECIPES = {**RECIPES, "int8": "nncf static int8, mixed preset, attention int8"}


def compress(ov_model, precision: str, tables: dict[str, np.ndarray], calibration_ids: list[list[int]],
             smooth_quant: float | None = None, float_types: list[str] = (), float_names: list[str] = ()):
    """Apply the precision recipe to the fp32 OpenVINO model (calibration texts as token ids).

    For static int8, `smooth_quant` sets NNCF's SmoothQuant alpha for MatMuls (None: NNCF's default, 0.95) and
    `float_types` / `float_names` name more op types / ops to leave float (convert/adapt.py uses them)."""
    import nncf

    if precision == "int8-weights":
        # optimum-intel's `--weight-format int8`: 8-bit asymmetric per-channel weights, all layers.
        return nncf.compress_weights(ov_model, mode=nncf.CompressWeightsMode.INT8_ASYM)
    if precision == "int8":
        # Static: weights and activations of every linear layer in int8, so matmuls run on VNNI/AMX units.
        # Attention itself (QK^T, softmax, AV) stays float: quantized, OpenVINO's CPU plugin cannot fuse it on
        # CPUs without int8 dot products (AVX2) and computes every head's full length x length score matrix,
        # ~22 GB for one 8192-token BGE-M3 text; float, it runs as one fused, tiled kernel everywhere
        # (figures: docs/reliability.md#5-memory-and-how-to-size-a-machine).
        settings = _static_int8(calibration_ids, float_types, float_names)
        return nncf.quantize(ov_model, _calibration(tables, calibration_ids),
                             advanced_parameters=_smooth_quant(smooth_quant), **settings)
    return ov_model


def compress_with_accuracy_control(ov_model, tables: dict[str, np.ndarray], calibration_ids: list[list[int]],
                                   validation_fn, validation_items: int, max_drop: float, float_types: list[str] = ()):
    """Static int8 whose most sensitive MatMuls NNCF returns to float, one at a time, until `validation_fn`'s metric
    (convert/adapt.py Validator, over `validation_items` texts apart from the calibration ones) drops by at most
    `max_drop`.

    SmoothQuant stays off here: NNCF reverts a layer's weights to the originals but keeps SmoothQuant's scaling of
    its input, which leaves a reverted layer wrong (measured: every layer reverted, dense cosine min 0.06)."""
    import nncf

    return nncf.quantize_with_accuracy_control(
        ov_model, _calibration(tables, calibration_ids), nncf.Dataset(list(range(validation_items))), validation_fn,
        max_drop=max_drop, drop_type=nncf.DropType.ABSOLUTE,
        advanced_quantization_parameters=_smooth_quant(-1.0), **_static_int8(calibration_ids, float_types))


def _calibration(tables: dict[str, np.ndarray], calibration_ids: list[list[int]]):
    import nncf

    return nncf.Dataset(calibration_ids, lambda ids: _feed(tables, ids))


def _smooth_quant(alpha: float | None):
    """NNCF's SmoothQuant alpha for MatMuls (None: NNCF's default, 0.95; negative: off)."""
    import nncf

    if alpha is None:
        return None
    return nncf.AdvancedQuantizationParameters(smooth_quant_alphas=nncf.AdvancedSmoothQuantParameters(matmul=alpha))


def _static_int8(calibration_ids: list[list[int]], float_types, float_names=()) -> dict:
    """The static int8 recipe's settings that nncf.quantize and quantize_with_accuracy_control share."""
    import nncf

    return dict(
        model_type=nncf.ModelType.TRANSFORMER,
        preset=nncf.QuantizationPreset.MIXED,
        subset_size=len(calibration_ids),
        ignored_scope=nncf.IgnoredScope(names=list(float_names), types=[FLOAT_OPS, *float_types], validate=False),
    )


def save(ov_model, tables: dict[str, np.ndarray], folder: Path, precision: str) -> None:
    import openvino as ov

    ov.save_model(ov_model, str(folder / MODEL_XML), compress_to_fp16=precision == "fp16")
    for name in {TOKEN_TABLE, TOKEN_TABLE_SCALES} - tables.keys():
        (folder / name).unlink(missing_ok=True)  # a float table replacing an int8 one leaves no scales behind
    for name, array in tables.items():
        np.save(folder / name, array)


def _feed(tables: dict[str, np.ndarray], ids: list[int]) -> dict[str, np.ndarray]:
    row = np.asarray([ids], dtype=np.int64)
    return {"inputs_embeds": lookup(tables, row), "attention_mask": np.ones_like(row)}
