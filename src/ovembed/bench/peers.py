"""The backends `ovembed bench engine` compares, each as a `run(ids)` callable on the same token ids.

- pytorch: the reference libraries in fp32 — FlagEmbedding's BGEM3FlagModel for a BGE-M3-layout folder,
  sentence-transformers otherwise — called on token ids (their `encode` takes text only, and every
  backend must see exactly the same shapes), so the timing covers their model, pooling and heads.
- onnx-fp32 / onnx-int8: ONNX Runtime on the same encoder exported with `torch.onnx.export` (dynamo),
  and that file after `quantize_dynamic(weight_type=QInt8)`: what an ONNX deployment would run.
- fp32 / int8-weights / int8: OpenVINO folders made by `ovembed quantize` (int8 is ours).

Exported ONNX files are cached beside the OpenVINO folders, so repeated runs skip the export."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ovembed.bench.common import cores

ONNX_FILE = "model.onnx"
OPENVINO_BACKENDS = ("fp32", "int8-weights", "int8", "int8-adapted")
ONNX_BACKENDS = ("onnx-fp32", "onnx-int8")
# What each backend is, for tables and plots; "int8" is ours, the one the ratios are about.
LABELS = {
    "pytorch": "PyTorch fp32",
    "onnx-fp32": "ONNX Runtime fp32",
    "onnx-int8": "ONNX Runtime dynamic int8",
    "fp32": "OpenVINO fp32",
    "int8-weights": "OpenVINO int8-weights",
    "int8": "ovembed int8 (ours)",
    "int8-adapted": "ovembed int8 adapted to the accuracy gate (convert/adapt.py)",
}
OURS = "int8"

Run = Callable[[list[list[int]]], object]


def pad(ids: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded int64 token ids and attention mask, as a tokenizer's `padding=True` makes them."""
    longest = max(len(x) for x in ids)
    token_ids = np.full((len(ids), longest), pad_id, dtype=np.int64)
    mask = np.zeros((len(ids), longest), dtype=np.int64)
    for row, x in enumerate(ids):
        token_ids[row, : len(x)] = x
        mask[row, : len(x)] = 1
    return token_ids, mask


# --- the ONNX files ---------------------------------------------------------------------------------


def ensure_onnx(source: Path, backend: str, cache: Path) -> Path:
    """The cached ONNX file for onnx-fp32 or onnx-int8, exported (and quantized) on first use."""
    fp32 = cache / f"{source.name}-onnx-fp32" / ONNX_FILE
    if not fp32.is_file():
        print(f"[bench] exporting {source} to ONNX -> {fp32.parent}", file=sys.stderr, flush=True)
        _atomic_folder(fp32.parent, lambda tmp: export_onnx(source, tmp / ONNX_FILE))
    if backend == "onnx-fp32":
        return fp32
    int8 = cache / f"{source.name}-onnx-int8" / ONNX_FILE
    if not int8.is_file():
        print(f"[bench] quantize_dynamic (QInt8) -> {int8.parent}", file=sys.stderr, flush=True)
        _atomic_folder(int8.parent, lambda tmp: quantize_onnx(fp32, tmp / ONNX_FILE))
    return int8


def _atomic_folder(folder: Path, make: Callable[[Path], object]) -> None:
    """Build into a scratch folder and rename it, so an interrupted export never looks finished."""
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    make(tmp)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def export_onnx(source: Path, path: Path) -> None:
    """The fp32 encoder (token ids -> the model's outputs) through torch.onnx's dynamo exporter, with
    dynamic batch and length. Weights go to an external data file: BGE-M3 is past protobuf's 2 GB."""
    import torch

    from ovembed.convert import export

    encoder = export.load_encoder(export.inspect_source(source, str(source), None, None))
    config = encoder.backbone.config
    # XLM-R's positions start after the pad id; BERT's at 0.
    offset = config.pad_token_id + 1 if config.model_type in ("xlm-roberta", "roberta") else 0
    max_length = config.max_position_embeddings - offset

    class TokenIds(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids, attention_mask):
            return self.encoder.embed_ids(input_ids, attention_mask)

    example = (torch.randint(5, 100, (2, 16)), torch.ones(2, 16, dtype=torch.int64))
    batch = torch.export.Dim("batch", min=1, max=4096)
    seq = torch.export.Dim("sequence", min=3, max=max_length)
    with torch.no_grad():
        program = torch.onnx.export(TokenIds().eval(), example, dynamo=True, input_names=["input_ids", "attention_mask"],
                                    output_names=encoder.output_names, external_data=True, verbose=False,
                                    dynamic_shapes={"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}})
    program.save(str(path), external_data=True)


def quantize_onnx(fp32: Path, path: Path) -> None:
    """ONNX Runtime's dynamic INT8 recipe: int8 weights, activations quantized per call."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(fp32), str(path), weight_type=QuantType.QInt8, use_external_data_format=True)


# --- loading each backend in the worker process --------------------------------------------------------


def load(backend: str, path: Path, pad_id: int, hint: str) -> tuple[Run, str, Callable[[], Run] | None]:
    """(run, how it runs, batched) for one backend. `batched` makes a thread-safe run for concurrent
    callers that merges their texts the way the service does (ours), or is None: then callers call
    `run` concurrently (PyTorch and ONNX Runtime sessions are thread-safe)."""
    if backend == "pytorch":
        return (*_pytorch(path, pad_id), None)
    if backend in ONNX_BACKENDS:
        return _onnxruntime(path, pad_id), f"onnxruntime {_version('onnxruntime')} InferenceSession, {cores()} threads", None
    return _openvino(path, hint)


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def _pytorch(folder: Path, pad_id: int) -> tuple[Run, str]:
    import torch

    from ovembed.convert.export import M3_HEADS

    ids_to_tensors = lambda ids: {k: torch.from_numpy(v) for k, v in zip(("input_ids", "attention_mask"), pad(ids, pad_id))}  # noqa: E731
    if all((folder / head).is_file() for head in M3_HEADS):
        from FlagEmbedding import BGEM3FlagModel

        colbert_dim = torch.load(folder / "colbert_linear.pt", map_location="cpu", weights_only=True)["weight"].shape[0]
        flag = BGEM3FlagModel(str(folder), use_fp16=False, devices="cpu", colbert_dim=colbert_dim)
        module = flag.model.float().eval()

        def run(ids: list[list[int]]) -> object:
            with torch.inference_mode():  # encode()'s own call, on our ids: all three heads
                return module(ids_to_tensors(ids), return_dense=True, return_sparse=True, return_colbert_vecs=True)

        return run, f"FlagEmbedding {_version('FlagEmbedding')} BGEM3FlagModel.model (dense+sparse+colbert), torch fp32"
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(folder), device="cpu").eval()

    def run(ids: list[list[int]]) -> object:
        with torch.inference_mode():  # encode()'s forward (transformer, pooling, normalize) on our ids
            return model(ids_to_tensors(ids))["sentence_embedding"]

    return run, f"sentence-transformers {_version('sentence-transformers')} SentenceTransformer.forward, torch fp32"


def _onnxruntime(path: Path, pad_id: int) -> Run:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = cores()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(ids: list[list[int]]) -> object:
        token_ids, mask = pad(ids, pad_id)
        return session.run(None, {"input_ids": token_ids, "attention_mask": mask})

    return run


def _openvino(folder: Path, hint: str) -> tuple[Run, str, Callable[[], Run]]:
    from ovembed.engine import load_model
    from ovembed.engine.batcher import TokenBudgetBatcher

    model = load_model(folder, performance_hint=hint)
    wanted = model.outputs  # the graph computes every head anyway; ask for all, as the peers get them

    def run(ids: list[list[int]]) -> object:
        return model.embed_tokens(ids, wanted)

    def batched() -> Run:
        batcher = TokenBudgetBatcher(model)
        return lambda ids: batcher.submit(ids, wanted).result()

    return run, f"openvino {_version('openvino')} ovembed EmbeddingModel.embed_tokens, hint {hint}", batched
