"""`--precision int8` that adapts to outlier channels instead of failing the accuracy gate.

RoBERTa-family encoders carry a few hidden dimensions tens of times larger than the rest (see
convert/synthetic.py OUTLIER_STRENGTHS). A per-tensor INT8 activation scale is then set by them and the other
channels lose their precision. The candidates below are tried in order, each only if the one before failed the
gate (pipeline.py checks each against fp32 PyTorch on the verification texts):

1. static int8: the plain recipe (quantize.compress). Models without outliers stop here, unchanged.
2. smoothquant: NNCF's SmoothQuant, its alpha chosen per model on the validation texts, with the vocabulary
   table stored fp16 instead of int8 rows and the in-graph embedding lookups (positions, token types) left
   float. On outlier models the int8 table alone costs the most (MiniLM with outliers, fp32 graph and int8
   table: dense cosine min 0.83).
3. smoothquant, outlier layers float: the same alpha, with the MatMuls whose inputs carry the most extreme
   channels (outlier_ranking, from the fp32 graph on the calibration texts) left float, 1, 2, 4, ... of them up to
   a fifth of all; the first count whose validation score reaches the aim (a margin inside the gate) is kept,
   else the best.
4. accuracy control: `nncf.quantize_with_accuracy_control` returns the most sensitive MatMuls to float until the
   gate's dense cosine, on the validation texts, holds with a margin (it may leave more than a fifth float).
5. int8 weights: weight-only INT8 with float parts in f32 (the manifest says int8; the engine runs int8 models'
   float parts in f32), for when activations cannot be quantized at all.

Calibration, validation (choosing among candidates) and verification (the gate) use three separate text sets.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from ovembed.convert import quantize as recipes
from ovembed.manifest import TOKEN_TABLE

SMOOTH_QUANT_ALPHAS = (0.5, 0.65, 0.8, 0.9, 0.95)
# Steps tuned on the validation texts aim this far inside the gate, since the gate is judged on other texts.
MARGIN = 0.75
# Step 3 leaves at most this share of the MatMuls float (the rest stay INT8).
MAX_FLOAT_SHARE = 0.2
# Embedding lookups inside the graph (position and token-type tables): float in the adapted steps.
LOOKUP_OPS = "Gather"


@dataclass
class Candidate:
    # static int8 | smoothquant | smoothquant, outlier layers float | accuracy control | int8 weights | a precision
    step: str
    model: object  # openvino.Model
    tables: dict[str, np.ndarray]  # the vocabulary table stored with it
    detail: dict = field(default_factory=dict)


def gate_metric(cosines, mean_min: float, min_min: float) -> float:
    """One number that is >= mean_min exactly when the gate's two conditions hold (mean >= mean_min and
    min >= min_min): the lowest cosine's shortfall is scaled onto the mean's."""
    cosines = np.asarray(cosines, dtype=np.float64)
    scale = max(1.0 - mean_min, 0.0) / (1.0 - min_min) if min_min < 1.0 else 1.0
    return float(min(cosines.mean(), 1.0 - (1.0 - cosines.min()) * scale))


class Validator:
    """Scores a candidate graph on the validation texts: dense cosine to the fp32 graph with the fp32 vocabulary
    table, as the gate does. A candidate runs with the table it will be stored with, so that table's error counts."""

    def __init__(self, fp32_model, fp32_table: np.ndarray, ids: list[list[int]], mean_min: float, min_min: float):
        import openvino as ov

        self.core = ov.Core()
        self.ids, self.mean_min, self.min_min = ids, mean_min, min_min
        # What a candidate tuned on these texts aims at: (1 - MARGIN) of the way from the gate to a perfect score,
        # since the gate itself is judged on other texts.
        self.max_drop = max(1.0 - mean_min, 0.0) * MARGIN
        self.target = 1.0 - self.max_drop
        self.reference = self._dense(self._compile(fp32_model), {TOKEN_TABLE: fp32_table}, range(len(ids)))

    def _compile(self, model):
        return self.core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})

    def _dense(self, compiled, tables: dict[str, np.ndarray], indices) -> np.ndarray:
        rows = [np.asarray(compiled(recipes._feed(tables, self.ids[i]))[0][0], dtype=np.float64) for i in indices]
        dense = np.stack(rows)
        return dense / np.maximum(np.linalg.norm(dense, axis=1, keepdims=True), 1e-12)

    def _cosines(self, compiled, tables: dict[str, np.ndarray], indices) -> np.ndarray:
        indices = list(indices)
        return np.sum(self._dense(compiled, tables, indices) * self.reference[indices], axis=1)

    def score(self, model, tables: dict[str, np.ndarray]) -> float:
        cosines = self._cosines(self._compile(model), tables, range(len(self.ids)))
        return gate_metric(cosines, self.mean_min, self.min_min)

    def nncf_validation_fn(self, tables: dict[str, np.ndarray]):
        """`validation_fn` for nncf.quantize_with_accuracy_control; its items are indices into the validation texts."""

        def validate(compiled, items) -> tuple[float, list[float]]:
            cosines = self._cosines(compiled, tables, items)
            return gate_metric(cosines, self.mean_min, self.min_min), [float(c) for c in cosines]

        return validate


def candidates(fp32_model, fp32_table: np.ndarray, calibration_ids: list[list[int]], validator: Validator,
               log: Callable[[str], None]) -> Iterator[Candidate]:
    """The int8 candidates in order of preference; each is built only when asked for (the previous one failed)."""
    tables = recipes.quantize_table(fp32_table, "int8")
    yield Candidate("static int8", recipes.compress(fp32_model.clone(), "int8", tables, calibration_ids), tables)

    tables = recipes.quantize_table(fp32_table, "fp16")
    log(f"static INT8 failed the gate: trying SmoothQuant alphas {', '.join(map(str, SMOOTH_QUANT_ALPHAS))} "
        "on the validation texts")
    smoothed = _best_smooth_quant(fp32_model, tables, calibration_ids, validator, log)
    yield smoothed

    alpha = smoothed.detail["smooth_quant_alpha"]
    del smoothed
    log(f"SmoothQuant failed the gate: leaving the MatMuls with the most extreme input channels float (alpha {alpha})")
    yield _outlier_layers_float(fp32_model, tables, calibration_ids, validator, alpha, log)

    log("that failed the gate too: trying NNCF accuracy control (sensitive MatMuls back to float)")
    model = recipes.compress_with_accuracy_control(
        fp32_model.clone(), tables, calibration_ids, validator.nncf_validation_fn(tables), len(validator.ids),
        max_drop=validator.max_drop, float_types=[LOOKUP_OPS])
    yield Candidate("accuracy control", model, tables,
                    {"validation_score": round(validator.score(model, tables), 6)})

    log("accuracy control failed the gate: trying weight-only INT8 with f32 float parts")
    yield Candidate("int8 weights", recipes.compress(fp32_model.clone(), "int8-weights", tables, []), tables)


def _best_smooth_quant(fp32_model, tables, calibration_ids, validator: Validator, log) -> Candidate:
    best = None
    for alpha in SMOOTH_QUANT_ALPHAS:
        model = recipes.compress(fp32_model.clone(), "int8", tables, calibration_ids, smooth_quant=alpha,
                                 float_types=[LOOKUP_OPS])
        score = validator.score(model, tables)
        log(f"  alpha {alpha}: validation score {score:.4f} (gate: {validator.mean_min})")
        if best is None or score > best[0]:
            best = (score, alpha, model)
    score, alpha, model = best
    return Candidate("smoothquant", model, tables, {"smooth_quant_alpha": alpha, "validation_score": round(score, 6)})


def _outlier_layers_float(fp32_model, tables, calibration_ids, validator: Validator, alpha: float,
                          log) -> Candidate:
    """SmoothQuant at `alpha` with the k most outlier-laden MatMuls float, k = 1, 2, 4, ... up to MAX_FLOAT_SHARE:
    the first k that reaches the validator's aim, else the best seen."""
    ranking = outlier_ranking(fp32_model, tables, calibration_ids)
    limit = max(1, int(len(ranking) * MAX_FLOAT_SHARE))
    counts = sorted({min(2 ** i, limit) for i in range(limit.bit_length() + 1)})
    best = None
    for k in counts:
        model = recipes.compress(fp32_model.clone(), "int8", tables, calibration_ids, smooth_quant=alpha,
                                 float_types=[LOOKUP_OPS], float_names=[name for name, _ in ranking[:k]])
        score = validator.score(model, tables)
        log(f"  {k} of {len(ranking)} float: validation score {score:.4f} (aim: {validator.target:.4f})")
        if best is None or score > best[0]:
            best = (score, k, model)
        if score >= validator.target:
            break
    score, k, model = best
    return Candidate("smoothquant, outlier layers float", model, tables,
                     {"smooth_quant_alpha": alpha, "validation_score": round(score, 6),
                      "outlier_ratios": {name: round(ratio, 1) for name, ratio in ranking[:k]}})


def outlier_ranking(fp32_model, tables: dict[str, np.ndarray], ids: list[list[int]]) -> list[tuple[str, float]]:
    """Every MatMul with a constant weight, by how hard its outliers are to quantize, hardest first.

    Per input channel j: a_j = max |x_j| over `ids`, w_j = max |W[:, j]|. SmoothQuant moves difficulty between the
    two (x_j / s_j, W[:, j] * s_j) but leaves a_j * w_j as it is, so what no alpha can fix is how far the largest
    a_j * w_j stands above the median one: about 1 without outliers, tens with. (Measured on MiniLM with
    BENCH_OUTLIERS: the raw activation ratio ranks the attention output projections first, yet SmoothQuant handles
    them; the FFN down projections, first by this product, are the ones whose float copy passes the gate.)"""
    import openvino as ov

    model = fp32_model.clone()
    weighted = [(op, _constant_source(op.inputs()[1])) for op in model.get_ops() if op.get_type_name() == "MatMul"]
    weighted = [(op, weight) for op, weight in weighted if weight is not None]
    sources = [op.input_value(0) for op, _ in weighted]
    model.add_outputs(sources)  # Q, K and V read one input: it becomes one output
    port = [result.input_value(0) for result in model.get_results()]
    where = {(o.get_node().get_friendly_name(), o.get_index()): i for i, o in enumerate(port)}
    slots = [where[(x.get_node().get_friendly_name(), x.get_index())] for x in sources]
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    peaks: dict[int, np.ndarray] = {}
    for text in ids:
        outputs = compiled(recipes._feed(tables, text)).to_tuple()
        for slot in set(slots):
            x = np.abs(outputs[slot])
            values = x.reshape(-1, x.shape[-1]).max(axis=0)
            peaks[slot] = np.maximum(peaks[slot], values) if slot in peaks else values
    ranking = []
    for (op, weight), slot in zip(weighted, slots, strict=True):
        product = peaks[slot] * _input_channel_max(op, weight)
        ranking.append((op.get_friendly_name(), float(product.max() / max(float(np.median(product)), 1e-12))))
    return sorted(ranking, key=lambda item: -item[1])


def _input_channel_max(matmul, constant) -> np.ndarray:
    """max |W[:, j]| per input channel j of a MatMul's constant weight `constant` (fp32 graph)."""
    weight = np.abs(constant.get_data().astype(np.float32))
    weight = weight.reshape(-1, weight.shape[-1]) if weight.ndim > 2 else weight
    # x @ W^T (transpose_b, PyTorch's Linear) reads W's last axis as input channels; x @ W its first
    return weight.max(axis=0) if matmul.get_attributes().get("transpose_b") else weight.max(axis=1)


def describe(candidate: Candidate, layer_names: list[str]) -> dict:
    """The manifest's `quantization` record: the step that made the model and which of its linear layers compute
    in INT8 (an activation quantizer on their input), keep only INT8 weights, or stayed float. `layer_names`:
    linear_call_order(encoder)."""
    int8, weights_only, floating = [], [], []
    for op in candidate.model.get_ops():
        weight = _constant_source(op.inputs()[1]) if op.get_type_name() == "MatMul" else None
        if weight is None:
            continue
        name = _layer_name(op.get_friendly_name(), layer_names)
        inputs = [port.get_source_output().get_node().get_type_name() for port in op.inputs()]
        if "FakeQuantize" in inputs:
            int8.append(name)
        elif weight.get_output_element_type(0).get_type_name() in ("i8", "u8"):
            weights_only.append(name)
        else:
            floating.append(name)
    total = len(int8) + len(weights_only) + len(floating)
    detail = dict(candidate.detail)
    if "outlier_ratios" in detail:
        detail["outlier_ratios"] = {_layer_name(k, layer_names): v for k, v in detail["outlier_ratios"].items()}
    return {"step": candidate.step, **detail, "linear_layers": total, "int8_layers": len(int8),
            "int8_weight_only_layers": len(weights_only), "float_layers": sorted(floating)}


def linear_call_order(encoder) -> list[str]:
    """The encoder's nn.Linear modules in the order forward() calls them, which is the order torch.export names
    their MatMuls (linear, linear_1, ...)."""
    import torch

    order: list[str] = []
    hooks = [module.register_forward_hook(lambda *_, name=name: order.append(name))
             for name, module in encoder.named_modules() if isinstance(module, torch.nn.Linear)]
    try:
        hidden = encoder.backbone.config.hidden_size
        with torch.no_grad():
            encoder(torch.zeros(1, 4, hidden), torch.ones(1, 4, dtype=torch.int64))
    finally:
        for hook in hooks:
            hook.remove()
    return order


def _layer_name(friendly: str, order: list[str]) -> str:
    """`linear_14/aten.linear.default/MatMul` -> the 15th Linear module called; other names as they are."""
    match = re.fullmatch(r"linear(?:_(\d+))?", friendly.split("/", 1)[0])
    position = int(match.group(1) or 0) if match else len(order)
    return order[position] if position < len(order) else friendly


def _constant_source(port):
    """The Constant behind a MatMul input through decompression ops (Convert, Subtract, Multiply, Reshape)."""
    node = port.get_source_output().get_node()
    while node.get_type_name() in ("Convert", "Subtract", "Multiply", "Reshape", "Transpose", "FakeQuantize"):
        node = node.input_value(0).get_node()
    return node if node.get_type_name() == "Constant" else None
