"""Randomly initialised models with BGE-M3's layout, for tests and speed measurements offline.

The folder looks like the hub's BAAI/bge-m3: an XLM-RoBERTa backbone (safetensors), its tokenizer,
`sparse_linear.pt` and `colbert_linear.pt`, so FlagEmbedding's BGEM3FlagModel loads it too."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

# BGE-M3's real architecture (568M parameters); the weights here are random, the speed is real.
BGE_M3_ARCHITECTURE = dict(
    vocab_size=250002,
    hidden_size=1024,
    num_hidden_layers=24,
    num_attention_heads=16,
    intermediate_size=4096,
    max_position_embeddings=8194,
)
TINY_ARCHITECTURE = dict(
    vocab_size=None,  # the trained tokenizer's size
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=128,
    max_position_embeddings=514,
)


def builtin_texts(name: str = "calibration.txt") -> list[str]:
    text = resources.files("ovembed").joinpath("data", name).read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.strip()]


def build_tokenizer(texts: list[str], vocab_size: int = 2000):
    """An XLM-R-style SentencePiece-Unigram tokenizer (<s>=0 <pad>=1 </s>=2 <unk>=3) trained on texts."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import XLMRobertaTokenizerFast

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=["<s>", "<pad>", "</s>", "<unk>"], unk_token="<unk>"
    )
    tok.train_from_iterator(texts, trainer)
    tok.add_special_tokens(["<mask>"])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    return XLMRobertaTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>", eos_token="</s>", sep_token="</s>", cls_token="<s>",
        unk_token="<unk>", pad_token="<pad>", mask_token="<mask>",
    )


def build_m3_layout_model(folder: str | Path, seed: int = 0, colbert_dim: int | None = None, **architecture) -> Path:
    """Write a random BGE-M3-layout model to `folder` (TINY_ARCHITECTURE unless overridden)."""
    import torch
    from transformers import XLMRobertaConfig, XLMRobertaModel

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    arch = {**TINY_ARCHITECTURE, **architecture}
    tokenizer = build_tokenizer(builtin_texts())
    tokenizer.model_max_length = arch["max_position_embeddings"] - 2
    tokenizer.save_pretrained(folder)
    arch["vocab_size"] = max(arch["vocab_size"] or 0, len(tokenizer))

    torch.manual_seed(seed)
    config = XLMRobertaConfig(pad_token_id=1, bos_token_id=0, eos_token_id=2, type_vocab_size=1, **arch)
    model = XLMRobertaModel(config).eval()
    model.save_pretrained(folder, safe_serialization=True)
    hidden = config.hidden_size
    colbert = torch.nn.Linear(hidden, colbert_dim or hidden)
    sparse = torch.nn.Linear(hidden, 1)
    torch.save(colbert.state_dict(), folder / "colbert_linear.pt")
    torch.save(sparse.state_dict(), folder / "sparse_linear.pt")
    return folder


# Outlier channels, as RoBERTa-family encoders carry them (Kovaleva et al. 2021, "BERT Busters: Outlier Dimensions
# that Disrupt Transformers"; Bondarenko et al. 2021, "Understanding and Overcoming the Challenges of Efficient
# Transformer Quantization"; Dettmers et al. 2022, LLM.int8(); Xiao et al. 2023, SmoothQuant): a few dimensions, the
# same in every layer, whose activations are tens of times the rest and so set any per-tensor INT8 scale.
# Two sites:
# - "layernorm" (the stand-in): every layer's post-FFN LayerNorm gets weight x scale, bias + shift on the
#   picked hidden channels. The outliers then sit in the residual stream, as in real RoBERTa, but random weights
#   were never trained to live with them: MiniLM's STS-B falls from 0.82 to 0.10, so quality figures on it mean
#   little (its fp32 is a different, poor model).
# - "projections": the outliers sit in the inputs of two MatMuls per layer, and the model keeps its quality. The
#   attention's value projection gets x scale, + shift on the picked channels and the attention output projection
#   divides them back out (exact: attention weights sum to 1, so the context carries the same affine change). The
#   FFN's picked intermediate channels get + 2 x shift before GELU and the output projection subtracts it; GELU is
#   the identity that far out, so those channels become linear. That changes the embeddings but not their quality
#   (MiniLM STS-B en 0.820 -> 0.827, scripts/outlier-figures.py on its fp32 conversion).
OUTLIER_STRENGTHS = {"mild": (30.0, 8.0), "strong": (80.0, 20.0)}
OUTLIER_SITES = ("layernorm", "projections")
# `ovembed bench engine --outliers`: quality-keeping outliers that plain static INT8 fails on (MiniLM: dense
# cosine min 0.963; the tiny BGE-M3 layout: 0.923; `ovembed quantize --no-gate` on a copy prints them).
BENCH_OUTLIERS = dict(channels=6, scale=80.0, shift=20.0, seed=1, site="projections")


def inject_outliers(source: str | Path, folder: str | Path, channels: int = 3, scale: float = 80.0,
                    shift: float = 20.0, seed: int = 0, site: str = "layernorm") -> list[int]:
    """Copy the model folder `source` to `folder` with outlier channels at `site` (see above) in every layer.
    Returns the hidden channels picked. With "layernorm" the result is a different model; its own fp32 is the
    reference to compare with."""
    import shutil

    import numpy as np
    import torch
    from transformers import AutoModel

    if site not in OUTLIER_SITES:
        raise ValueError(f"unknown outlier site {site!r}: one of {', '.join(OUTLIER_SITES)}")
    source, folder = Path(source), Path(folder)
    shutil.copytree(source, folder, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("*.safetensors", "pytorch_model.bin", ".git*"))
    model = AutoModel.from_pretrained(source).eval()
    rng = np.random.default_rng(seed)
    picked = sorted(rng.choice(model.config.hidden_size, channels, replace=False).tolist())
    inner = sorted(rng.choice(model.config.intermediate_size, channels, replace=False).tolist())
    with torch.no_grad():
        for layer in model.encoder.layer:
            if site == "layernorm":
                norm = layer.output.LayerNorm
                norm.weight[picked] *= scale
                norm.bias[picked] += shift
            else:
                _affine_pair(layer.attention.self.value, layer.attention.output.dense, picked, scale, shift)
                _affine_pair(layer.intermediate.dense, layer.output.dense, inner, 1.0, 2 * shift)
    model.save_pretrained(folder, safe_serialization=True)
    return picked


def _affine_pair(first, second, channels: list[int], scale: float, shift: float) -> None:
    """Channels of `first`'s output become scale * x + shift; `second` (a Linear reading them) undoes it."""
    import torch

    second.bias -= second.weight[:, channels] @ torch.full((len(channels),), shift) / scale
    second.weight[:, channels] /= scale
    first.weight[channels] *= scale
    first.bias[channels] = first.bias[channels] * scale + shift
