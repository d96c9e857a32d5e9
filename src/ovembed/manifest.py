"""The model folder's manifest (ovembed.json), known model specs (to fill gaps a folder leaves) and finding
a model folder by path, name or hub id.

The manifest is the contract between `ovembed quantize` and the engine: the engine reads
everything it needs (pooling, dimension, max length, outputs, special tokens) from it."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ovembed.errors import ErrorKind, OvembedError

MANIFEST_NAME = "ovembed.json"
MODEL_XML = "openvino_model.xml"
MODEL_BIN = "openvino_model.bin"
# The vocabulary table lives outside the graph (see ARCHITECTURE: memory): int8 rows + per-row scales,
# or fp16/fp32 rows, memory-mapped by the engine.
TOKEN_TABLE = "token_embeddings.npy"
TOKEN_TABLE_SCALES = "token_embeddings_scales.npy"
FORMAT_VERSION = 1

DEFAULT_MODEL = "BAAI/bge-m3"
PRECISIONS = ("int8", "int8-weights", "fp16", "fp32")


@dataclass(frozen=True)
class ModelSpec:
    """What we know of a hub model when its folder does not say it."""

    model_id: str
    pooling: str  # "cls" | "mean"
    normalize: bool
    max_length: int


KNOWN_MODELS = {
    "BAAI/bge-m3": ModelSpec("BAAI/bge-m3", pooling="cls", normalize=True, max_length=8192),
    "sentence-transformers/all-MiniLM-L6-v2": ModelSpec(
        "sentence-transformers/all-MiniLM-L6-v2", pooling="mean", normalize=True, max_length=256
    ),
}

# Names users type that do not exist on the hub, and what they meant.
ALIASES = {
    "BAAI/bge-m3-base": "BAAI/bge-m3",
    "bge-m3": "BAAI/bge-m3",
    "bge-m3-base": "BAAI/bge-m3",
    "all-MiniLM-L6-v2": "sentence-transformers/all-MiniLM-L6-v2",
}


def resolve_alias(model: str) -> tuple[str, str | None]:
    """Return (model id, warning or None) for a name a user typed."""
    target = ALIASES.get(model)
    if target is None:
        return model, None
    if model.endswith("-base"):
        return target, f"'{model}' does not exist; using '{target}' (BGE-M3 has one size, 568M parameters)"
    return target, None


@dataclass
class Manifest:
    """ovembed.json: what a model folder holds and how it was made and checked."""

    source: str  # hub id or the local folder it was converted from
    revision: str | None
    architecture: str  # e.g. XLMRobertaModel
    layout: str  # "m3" (dense + sparse + colbert heads) | "sentence-transformer"
    dimension: int
    colbert_dimension: int | None
    pooling: str
    normalize: bool
    max_length: int
    outputs: list[str]
    precision: str
    hidden_size: int
    vocab_size: int
    pad_token_id: int
    special_token_ids: list[int]
    token_table_dtype: str  # int8 | float16 | float32
    files: dict[str, str] = field(default_factory=dict)  # name -> sha256
    sizes: dict[str, int] = field(default_factory=dict)  # name -> bytes (older manifests have none)
    verification: dict = field(default_factory=dict)
    tool_versions: dict[str, str] = field(default_factory=dict)
    source_folder: str | None = None  # the local folder it was converted from (None: the hub); `source` may be its id
    recipe: str | None = None  # how the precision was applied (convert.quantize.RECIPES); None: not recorded
    # int8: the step that made it (convert/adapt.py), its INT8 and float linear layers, and every step tried
    quantization: dict = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    @property
    def name(self) -> str:
        return self.source.rstrip("/").split("/")[-1]

    @property
    def fingerprint(self) -> str:
        """What identifies the model's vectors wherever it is reached from (a folder, a service): its verified
        files' checksums. Two folders with the same files make the same vectors."""
        return hashlib.sha256(json.dumps(self.files, sort_keys=True).encode()).hexdigest()[:16]

    def model_id(self, fallback: str) -> str:
        """The hub id when the source was one, else `fallback` (the folder name)."""
        return self.source if looks_like_hub_id(self.source) else fallback

    def write(self, folder: Path) -> None:
        (Path(folder) / MANIFEST_NAME).write_text(json.dumps(asdict(self), indent=2, ensure_ascii=False) + "\n")

    @classmethod
    def read(cls, folder: Path) -> Manifest:
        path = Path(folder) / MANIFEST_NAME
        if not Path(folder).is_dir():
            raise OvembedError(ErrorKind.MODEL_NOT_FOUND, f"model folder not found: {folder}")
        if not path.is_file():
            raise OvembedError(
                ErrorKind.MODEL_INVALID,
                f"{folder} has no {MANIFEST_NAME}: make it with `ovembed quantize MODEL --output {folder}`",
            )
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                raise ValueError(f"a JSON object was expected, not {type(data).__name__}")
            known = {f for f in cls.__dataclass_fields__}
            manifest = cls(**{k: v for k, v in data.items() if k in known})
            if not isinstance(manifest.files, dict) or not isinstance(manifest.sizes, dict):
                raise ValueError("'files' and 'sizes' must be objects")
            return manifest
        except (OSError, UnicodeDecodeError, ValueError, TypeError) as exc:
            raise OvembedError(ErrorKind.MODEL_INVALID, f"{path} is not a valid manifest: {exc}") from None

    def check_files(self, folder: Path, checksums: bool = True) -> None:
        """Refuse a folder whose files are missing or differ from what was verified.

        Presence and sizes are always checked (a stat per file). `checksums` also hashes every file, which costs
        load time in proportion to the model's size (figures: docs/reliability.md#3-faults)."""
        for name, expected in self.files.items():
            path = Path(folder) / name
            if not path.is_file():
                raise OvembedError(ErrorKind.MODEL_INVALID, f"{folder}: {name} is missing")
            size, recorded = path.stat().st_size, self.sizes.get(name)
            if recorded is not None and size != recorded:
                raise OvembedError(
                    ErrorKind.MODEL_INVALID,
                    f"{folder}: {name} is {size} bytes, not the {recorded} recorded with its checksum in {MANIFEST_NAME} "
                    "(truncated or modified)",
                )
            if checksums and sha256_file(path) != expected:
                raise OvembedError(
                    ErrorKind.MODEL_INVALID,
                    f"{folder}: {name} does not match the checksum in {MANIFEST_NAME} (corrupt or modified)",
                )


def looks_like_hub_id(name: str) -> bool:
    """`org/name`, not a path (`./x/y`, `/x/y`, `~/x`)."""
    return name.count("/") == 1 and not name.startswith((".", "/", "~"))


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def find_folder(spec: str, models_dir: Path) -> Path | None:
    """A folder as given, or one under models_dir named `spec` or whose manifest's id or short name is
    `spec`; when several precisions of one model are there, a hub id means the int8 one."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    if not models_dir.is_dir():
        return None
    matches = []
    # Hidden folders are skipped: `ovembed quantize` builds in `.NAME.partial-PID` (a crash can leave one).
    for folder in sorted(p.parent for p in models_dir.glob(f"[!.]*/{MANIFEST_NAME}")):
        if folder.name == spec:
            return folder
        try:
            manifest = Manifest.read(folder)
        except OvembedError:
            continue
        if spec in (manifest.source, manifest.name):
            matches.append((manifest.precision != "int8", folder))
    return min(matches)[1] if matches else None
