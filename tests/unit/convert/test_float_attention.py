"""The int8 recipe leaves attention float: the CPU plugin then runs it as one fused, tiled kernel on every CPU,
instead of a full length x length score matrix per head where int8 attention cannot be fused (AVX2)."""

from __future__ import annotations

import collections

import openvino as ov

from ovembed import load_model
from ovembed.convert.quantize import FLOAT_OPS
from ovembed.manifest import MODEL_XML

PASS_THROUGH = {"Transpose", "Reshape", "Convert", "Multiply", "Add", "Select", "Broadcast", "Concat", "Unsqueeze"}


def _fake_quantized_inputs(op) -> int:
    """FakeQuantize ops feeding this op, looking through shape-only and elementwise ops."""
    seen, found, todo = set(), 0, [i.get_source_output().get_node() for i in op.inputs()]
    while todo:
        node = todo.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if node.get_type_name() == "FakeQuantize":
            found += 1
        elif node.get_type_name() in PASS_THROUGH:
            todo.extend(i.get_source_output().get_node() for i in node.inputs())
    return found


def test_int8_attention_inputs_stay_float_and_attention_is_fused(minilm_int8):
    graph = ov.Core().read_model(str(minilm_int8 / MODEL_XML))
    attention = [op for op in graph.get_ops() if op.get_type_name() == FLOAT_OPS]
    assert len(attention) == 6  # one per layer of MiniLM-L6
    assert all(_fake_quantized_inputs(op) == 0 for op in attention)
    assert sum(op.get_type_name() == "FakeQuantize" for op in graph.get_ops()) >= 6 * 4  # the linear layers are int8

    model = load_model(minilm_int8)
    layers = collections.Counter(op.get_rt_info()["layerType"].astype(str)
                                 for op in model.runtime.compiled.get_runtime_model().get_ops())
    assert layers["Softmax"] == 0  # no stand-alone softmax over a materialized score matrix
    assert layers["FullyConnected"] >= 6 * 6
