"""PyTorch -> one OpenVINO graph with named outputs (dense, and for BGE-M3 also sparse, colbert).

The graph takes `inputs_embeds` + `attention_mask`: the vocabulary lookup happens outside, from a
memory-mapped table (see engine/runtime.py TokenTable). Conversion goes through torch.export, which
works where TorchScript tracing of XLM-R breaks."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ovembed.convert.target import hub_id
from ovembed.errors import ErrorKind, OvembedError
from ovembed.manifest import KNOWN_MODELS

M3_HEADS = ("sparse_linear.pt", "colbert_linear.pt")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "config.json")
# Files worth fetching from the hub; BGE-M3's repo also holds an ONNX copy we do not want.
HUB_PATTERNS = ["*.json", "*.txt", "*.model", "*.pt", "*.safetensors", "pytorch_model.bin", "1_Pooling/*"]


@dataclass
class SourceModel:
    """A model folder on disk and what we read from it."""

    folder: Path
    model_id: str  # hub id, or the folder path for local models
    revision: str | None
    layout: str  # "m3" | "sentence-transformer"
    pooling: str
    normalize: bool
    max_length: int
    architecture: str
    config: dict


def resolve_source(model: str, warn=print) -> tuple[Path, str, str | None]:
    """A local folder, or a hub id downloaded to the HF cache. Returns (folder, id, revision)."""
    if Path(model).expanduser().is_dir():
        folder = Path(model).expanduser().resolve()
        return folder, str(folder), None
    model_id = hub_id(model, warn)
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    how = (
        f"download it where the hub is reachable (`hf download {model_id} --local-dir ./{model_id.split('/')[-1]}`) "
        f"and pass the folder: `ovembed quantize ./{model_id.split('/')[-1]}`"
    )
    try:  # the HF cache first: no network needed for a model fetched before
        folder = snapshot_download(model_id, allow_patterns=HUB_PATTERNS, local_files_only=True)
        return Path(folder), model_id, Path(folder).name
    except (LocalEntryNotFoundError, OSError, ValueError):
        pass
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        raise OvembedError(ErrorKind.HUB_UNREACHABLE, f"'{model_id}' is not cached and HF_HUB_OFFLINE is set; {how}")
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "10")
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "30")
    try:
        folder = snapshot_download(model_id, allow_patterns=HUB_PATTERNS)
    except (RepositoryNotFoundError, GatedRepoError, RevisionNotFoundError) as exc:
        raise OvembedError(ErrorKind.MODEL_NOT_FOUND, f"'{model_id}' is not on the hub or not accessible: {exc}") from None
    except Exception as exc:  # connection refused, DNS, timeouts, proxies: all mean "no hub"
        raise OvembedError(
            ErrorKind.HUB_UNREACHABLE,
            f"could not download '{model_id}' from the Hugging Face hub ({type(exc).__name__}); {how}",
        ) from None
    return Path(folder), model_id, Path(folder).name


def inspect_source(folder: Path, model_id: str, revision: str | None, max_length: int | None) -> SourceModel:
    """Read layout, pooling and limits from the folder; the registry only fills gaps."""
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise OvembedError(ErrorKind.MODEL_INVALID, f"{folder} has no config.json: not a Hugging Face model folder")
    config = json.loads(config_path.read_text())
    spec = KNOWN_MODELS.get(model_id)
    layout = "m3" if all((folder / head).is_file() for head in M3_HEADS) else "sentence-transformer"

    pooling, normalize = ("cls", True) if layout == "m3" else _sentence_transformers_pooling(folder, spec)

    offset = config.get("pad_token_id", 0) + 1 if config.get("model_type") in ("xlm-roberta", "roberta") else 0
    position_limit = config.get("max_position_embeddings", 512) - offset
    default = _declared_max_length(folder) or (spec.max_length if spec else position_limit)
    limit = min(default, position_limit)
    if max_length is not None:
        if not 8 <= max_length <= position_limit:
            raise OvembedError(
                ErrorKind.VALIDATION, f"--max-length must be between 8 and {position_limit} for this model"
            )
        limit = max_length
    architecture = (config.get("architectures") or [config.get("model_type", "unknown")])[0]
    return SourceModel(folder, model_id, revision, layout, pooling, normalize, limit, architecture, config)


def _sentence_transformers_pooling(folder: Path, spec) -> tuple[str, bool]:
    pooling, normalize = (spec.pooling, spec.normalize) if spec else ("mean", False)
    pool_cfg = folder / "1_Pooling" / "config.json"
    if pool_cfg.is_file():
        cfg = json.loads(pool_cfg.read_text())
        if cfg.get("pooling_mode_cls_token"):
            pooling = "cls"
        elif cfg.get("pooling_mode_mean_tokens"):
            pooling = "mean"
        else:
            raise OvembedError(ErrorKind.MODEL_INVALID, f"{pool_cfg}: only cls and mean pooling are supported")
    modules = folder / "modules.json"
    if modules.is_file():
        normalize = any(m.get("type", "").endswith("Normalize") for m in json.loads(modules.read_text()))
    return pooling, normalize


def _declared_max_length(folder: Path) -> int | None:
    sbert = folder / "sentence_bert_config.json"
    if sbert.is_file():
        value = json.loads(sbert.read_text()).get("max_seq_length")
        if value:
            return int(value)
    tok_cfg = folder / "tokenizer_config.json"
    if tok_cfg.is_file():
        value = json.loads(tok_cfg.read_text()).get("model_max_length")
        if isinstance(value, int) and value < 1_000_000:
            return value
    return None


class EncoderGraph(torch.nn.Module):
    """The backbone plus pooling and heads: (inputs_embeds, attention_mask) -> named outputs."""

    def __init__(self, backbone, pooling: str, sparse_linear=None, colbert_linear=None):
        super().__init__()
        self.backbone = backbone
        self.pooling = pooling
        self.sparse_linear = sparse_linear
        self.colbert_linear = colbert_linear

    @property
    def output_names(self) -> list[str]:
        return ["dense"] + (["sparse", "colbert"] if self.sparse_linear is not None else [])

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor):
        hidden = self.backbone(inputs_embeds=inputs_embeds, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        if self.pooling == "cls":
            dense = hidden[:, 0]
        else:
            dense = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        if self.sparse_linear is None:
            return (dense,)
        sparse = torch.relu(self.sparse_linear(hidden)).squeeze(-1)
        colbert = self.colbert_linear(hidden[:, 1:]) * mask[:, 1:]
        return dense, sparse, colbert

    def embed_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        """The PyTorch reference path: the vocabulary lookup in float32, as the original model does."""
        return self(self.backbone.get_input_embeddings()(input_ids), attention_mask)


def load_encoder(source: SourceModel) -> EncoderGraph:
    from transformers import AutoModel

    try:
        backbone = AutoModel.from_pretrained(source.folder, dtype=torch.float32, attn_implementation="sdpa")
    except Exception as exc:
        raise OvembedError(ErrorKind.MODEL_INVALID, f"cannot load {source.folder} with transformers: {exc}") from None
    backbone.eval()
    sparse = colbert = None
    if source.layout == "m3":
        hidden = backbone.config.hidden_size
        colbert_state = torch.load(source.folder / "colbert_linear.pt", map_location="cpu", weights_only=True)
        colbert = torch.nn.Linear(hidden, colbert_state["weight"].shape[0])
        colbert.load_state_dict(colbert_state)
        sparse = torch.nn.Linear(hidden, 1)
        sparse.load_state_dict(torch.load(source.folder / "sparse_linear.pt", map_location="cpu", weights_only=True))
    return EncoderGraph(backbone, source.pooling, sparse, colbert).eval()


def export_openvino(encoder: EncoderGraph, max_length: int):
    """torch.export with dynamic batch and sequence length, then ov.convert_model; outputs named."""
    import openvino as ov

    hidden = encoder.backbone.config.hidden_size
    example = (torch.randn(2, 16, hidden), torch.ones(2, 16, dtype=torch.int64))
    batch = torch.export.Dim("batch", min=1, max=4096)
    # min=3: [CLS] + one token + [SEP]; a smaller bound lets torch.export specialise the colbert slice.
    seq = torch.export.Dim("sequence", min=3, max=max_length)
    shapes = {"inputs_embeds": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}}
    with torch.no_grad():
        program = torch.export.export(encoder, example, dynamic_shapes=shapes)
    ov_model = ov.convert_model(program)
    for port, name in zip(ov_model.inputs, ("inputs_embeds", "attention_mask")):
        port.get_tensor().set_names({name})
    for port, name in zip(ov_model.outputs, encoder.output_names):
        port.get_tensor().set_names({name})
    return ov_model


def token_table(encoder: EncoderGraph) -> np.ndarray:
    return encoder.backbone.get_input_embeddings().weight.detach().float().numpy()


def copy_tokenizer(source: SourceModel, dest: Path) -> dict[str, object]:
    """Put tokenizer.json (+ configs) in dest; return pad id and the special ids sparse output drops."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source.folder, use_fast=True)
    if (source.folder / "tokenizer.json").is_file():
        for name in TOKENIZER_FILES:
            if (source.folder / name).is_file():
                shutil.copy2(source.folder / name, dest / name)
    else:  # only a slow (sentencepiece / vocab.txt) tokenizer: let transformers write tokenizer.json
        tokenizer.save_pretrained(dest)
        shutil.copy2(source.folder / "config.json", dest / "config.json")
    special = [
        tokenizer.convert_tokens_to_ids(tokenizer.special_tokens_map[key])
        for key in ("cls_token", "eos_token", "pad_token", "unk_token")
        if key in tokenizer.special_tokens_map
    ]
    return {"pad_token_id": int(tokenizer.pad_token_id or 0), "special_token_ids": sorted({int(i) for i in special})}
