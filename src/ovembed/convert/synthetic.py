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
# that Disrupt Transformers"; Dettmers et al. 2022, LLM.int8(); Xiao et al. 2023, SmoothQuant): a few hidden
# dimensions, the same in every layer, whose LayerNorm scale and bias are tens of times the rest, so their
# activations dwarf the others' and set any per-tensor INT8 scale.
OUTLIER_STRENGTHS = {"mild": (30.0, 8.0), "strong": (80.0, 20.0)}


def inject_outliers(source: str | Path, folder: str | Path, channels: int = 3, scale: float = 80.0,
                    shift: float = 20.0, seed: int = 0) -> list[int]:
    """Copy the model folder `source` to `folder` with outlier channels: in every layer's post-FFN LayerNorm
    (`encoder.layer[i].output.LayerNorm`), `channels` dimensions get weight x `scale` and bias + `shift`.
    Returns the channels. The result is a different model; its own fp32 is the reference to compare with."""
    import shutil

    import numpy as np
    import torch
    from transformers import AutoModel

    source, folder = Path(source), Path(folder)
    shutil.copytree(source, folder, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("*.safetensors", "pytorch_model.bin", ".git*"))
    model = AutoModel.from_pretrained(source).eval()
    picked = sorted(np.random.default_rng(seed).choice(model.config.hidden_size, channels, replace=False).tolist())
    with torch.no_grad():
        for layer in model.encoder.layer:
            norm = layer.output.LayerNorm
            norm.weight[picked] *= scale
            norm.bias[picked] += shift
    model.save_pretrained(folder, safe_serialization=True)
    return picked
