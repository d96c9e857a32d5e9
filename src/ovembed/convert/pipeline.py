"""`ovembed quantize`: source -> export -> precision recipe -> verify -> gate -> publish.

The model is built in a staging folder beside the output and moved into place only once it is
complete and verified, so a failed or interrupted run never leaves a loadable half-model."""

from __future__ import annotations

import errno
import os
import shutil
import sys
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ovembed.convert import adapt, export, verify
from ovembed.convert import quantize as recipes
from ovembed.convert.synthetic import builtin_texts
from ovembed.convert.target import default_output
from ovembed.engine.model import EmbeddingModel
from ovembed.engine.tokenize import TextTokenizer
from ovembed.errors import ErrorKind, OvembedError
from ovembed.manifest import MANIFEST_NAME, PRECISIONS, TOKEN_TABLE, Manifest, sha256_file

CALIBRATION_MAX_TOKENS = 512


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def calibration_texts(path: Path | None) -> list[str]:
    """Sentences as given, plus runs of them joined, so calibration also sees paragraph lengths."""
    if path is not None:
        try:
            texts = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            raise OvembedError(ErrorKind.VALIDATION, f"cannot read calibration file {path}: {exc}") from None
        if not texts:
            raise OvembedError(ErrorKind.VALIDATION, f"calibration file {path} has no text lines")
    else:
        texts = builtin_texts("calibration.txt")
    joined = [" ".join(texts[i : i + 8]) for i in range(0, len(texts), 8)]
    return texts + joined


def tool_versions() -> dict[str, str]:
    versions = {}
    for name in ("ovembed", "openvino", "nncf", "torch", "transformers", "tokenizers", "numpy"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def run_quantize(
    model: str,
    output: Path | None = None,
    precision: str = "int8",
    max_length: int | None = None,
    calibration: Path | None = None,
    gate: bool = True,
    thresholds: verify.GateThresholds | None = None,
    model_id: str | None = None,
) -> tuple[Manifest, Path, list[str]]:
    """Build and verify a model folder. Returns (manifest, folder, gate failures).

    With `gate` on, a model that fails is not published and OvembedError(GATE_FAILED) is raised.
    `model_id` names a local folder's hub origin (e.g. BAAI/bge-m3) in the manifest and output name."""
    if precision not in PRECISIONS:
        raise OvembedError(ErrorKind.VALIDATION, f"precision must be one of {', '.join(PRECISIONS)}")
    folder, resolved_id, revision = export.resolve_source(model, warn=log)
    model_id = model_id or resolved_id
    source = export.inspect_source(folder, model_id, revision, max_length)
    output = Path(output) if output else default_output(model_id, precision)
    staging = output.parent / f".{output.name}.partial-{os.getpid()}"
    with _writing(output):
        _remove_stale(output)
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    try:
        manifest, failures = _build(source, staging, output, precision, calibration,
                                    thresholds or verify.GateThresholds(), adapt_to_gate=gate)
        if failures and gate:
            raise OvembedError(ErrorKind.GATE_FAILED, gate_failure(model_id, precision, manifest, failures, output))
        with _writing(output):
            _publish(staging, output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest, output, failures


# After a precision fails the gate: what to try next (never the precision that just failed).
NEXT_PRECISION = {
    "int8": "--precision fp16 (`make serve PRECISION=fp16`)",
    "int8-weights": "--precision int8, which adapts to outlier channels (`make serve PRECISION=int8`), or fp16",
    "fp16": "--precision fp32 (`make serve PRECISION=fp32`)",
    "fp32": "nothing: fp32 should match PyTorch, so this is a conversion bug; please report it with the manifest",
}


def gate_failure(model_id: str, precision: str, manifest: Manifest, failures: list[str], output: Path) -> str:
    """The gate's refusal: what was tried, with its figures, and the next thing to try."""
    tried = manifest.quantization.get("tried", [])
    steps = "; ".join(
        f"{t['step']}{_step_detail(t)}: dense cosine mean {t['dense_cosine_mean']:.4f}, min {t['dense_cosine_min']:.4f}"
        for t in tried)
    return (f"{model_id} at {precision} failed the accuracy gate ({'; '.join(failures)}); "
            f"tried {len(tried)} way{'s' if len(tried) != 1 else ''} ({steps}). Nothing was written to {output}. "
            f"Next: {NEXT_PRECISION[precision]}; or --no-gate to keep the plain {precision} model anyway.")


def _step_detail(tried: dict) -> str:
    parts = [f"alpha {tried['smooth_quant_alpha']}"] if "smooth_quant_alpha" in tried else []
    if tried.get("float_layers"):
        parts.append(f"{len(tried['float_layers'])} of {tried['linear_layers']} linear layers float")
    return f" ({', '.join(parts)})" if parts else ""


def _build(source: export.SourceModel, staging: Path, output: Path, precision: str, calibration: Path | None,
           thresholds: verify.GateThresholds, adapt_to_gate: bool = True) -> tuple[Manifest, list[str]]:
    """Without `adapt_to_gate` (--no-gate) only the precision's plain recipe is made and kept."""
    log(f"loading {source.model_id} ({source.layout} layout, {source.pooling} pooling) with PyTorch")
    encoder = export.load_encoder(source)
    with _writing(output):
        tokenizer_info = export.copy_tokenizer(source, staging)
    log(f"exporting to OpenVINO (max length {source.max_length})")
    fp32_model = export.export_openvino(encoder, source.max_length)
    fp32_table = export.token_table(encoder)
    tables = recipes.quantize_table(fp32_table, precision)
    manifest = _describe(source, encoder, tables, tokenizer_info, precision)
    gate = _Gate(encoder, staging, manifest, thresholds)
    layer_names = adapt.linear_call_order(encoder)
    tried: list[dict] = []
    for candidate in _candidates(source, staging, fp32_model, fp32_table, tables, precision, calibration, thresholds):
        with _writing(output):
            recipes.save(candidate.model, candidate.tables, staging, precision)
        manifest.token_table_dtype = str(candidate.tables[TOKEN_TABLE].dtype)
        manifest.quantization = adapt.describe(candidate, layer_names)
        written = [p for p in sorted(staging.iterdir()) if p.name != MANIFEST_NAME]
        manifest.files = {p.name: sha256_file(p) for p in written}
        manifest.sizes = {p.name: p.stat().st_size for p in written}
        with _writing(output):
            manifest.write(staging)
        failures = gate.check()
        tried.append({**manifest.quantization, **_figures(manifest.verification), "passed": not failures})
        manifest.quantization["tried"] = tried
        with _writing(output):
            manifest.write(staging)
        if not failures or not adapt_to_gate:
            break
    return manifest, failures


def _candidates(source: export.SourceModel, staging: Path, fp32_model, fp32_table: np.ndarray,
                tables: dict[str, np.ndarray], precision: str, calibration: Path | None,
                thresholds: verify.GateThresholds):
    """The models to try, best first: several for int8 (convert/adapt.py), one for the other precisions."""
    if precision != "int8":
        if precision == "int8-weights":
            log("quantizing: NNCF weight-only INT8 (asymmetric, per channel)")
        yield adapt.Candidate(precision, recipes.compress(fp32_model, precision, tables, []), tables)
        return
    tokenizer = TextTokenizer(staging, min(source.max_length, CALIBRATION_MAX_TOKENS))
    calibration_ids = tokenizer.encode(calibration_texts(calibration))
    log(f"quantizing: NNCF static INT8 (weights + activations), {len(calibration_ids)} calibration texts")
    validator = adapt.Validator(fp32_model, fp32_table, tokenizer.encode(builtin_texts("validation.txt")),
                                thresholds.dense_cosine_mean, thresholds.dense_cosine_min)
    yield from adapt.candidates(fp32_model, fp32_table, calibration_ids, validator, log)


def _figures(report: dict) -> dict:
    return {k: v for k, v in report.items() if k.startswith(("dense_cosine", "sparse_cosine", "colbert_cosine"))}


def _describe(source: export.SourceModel, encoder: export.EncoderGraph, tables: dict[str, np.ndarray],
              tokenizer_info: dict[str, object], precision: str) -> Manifest:
    """The manifest of the converted model, before its files and verification are recorded."""
    names = [r for r in ["dense", "sparse", "colbert"] if source.layout == "m3" or r == "dense"]
    colbert_dim = encoder.colbert_linear.out_features if encoder.colbert_linear is not None else None
    return Manifest(
        source=source.model_id,
        revision=source.revision,
        source_folder=str(source.folder) if source.revision is None else None,  # a hub download has a revision
        architecture=source.architecture,
        layout=source.layout,
        dimension=int(source.config["hidden_size"]),
        colbert_dimension=colbert_dim,
        pooling=source.pooling,
        normalize=source.normalize,
        max_length=source.max_length,
        outputs=names,
        precision=precision,
        recipe=recipes.RECIPES.get(precision),
        hidden_size=int(source.config["hidden_size"]),
        vocab_size=int(tables[TOKEN_TABLE].shape[0]),
        token_table_dtype=str(tables[TOKEN_TABLE].dtype),
        tool_versions=tool_versions(),
        **tokenizer_info,
    )


class _Gate:
    """The accuracy gate: the staged model against the fp32 PyTorch reference (computed once); the report goes into
    the manifest."""

    def __init__(self, encoder: export.EncoderGraph, staging: Path, manifest: Manifest,
                 thresholds: verify.GateThresholds):
        self.encoder, self.staging, self.manifest, self.thresholds = encoder, staging, manifest, thresholds
        self.texts = builtin_texts("verification.txt")
        self.reference = None

    def check(self) -> list[str]:
        log("verifying against the fp32 PyTorch reference")
        candidate = EmbeddingModel(self.staging, check_files=False)
        if self.reference is None:
            self.reference = verify.reference_embeddings(
                self.encoder, candidate.tokenize(self.texts), self.manifest.special_token_ids,
                progress=lambda it: tqdm(it, desc="reference", leave=False))
        names = self.manifest.outputs
        result = candidate.embed(self.texts, dense=True, sparse="sparse" in names, colbert="colbert" in names)
        del candidate
        report = verify.agreement(self.reference, result)
        failures = verify.gate_failures(report, self.thresholds)
        report["gate"] = {
            "dense_cosine_mean_min": self.thresholds.dense_cosine_mean,
            "dense_cosine_min_min": self.thresholds.dense_cosine_min,
            "passed": not failures,
        }
        self.manifest.verification = report
        return failures


@contextmanager
def _writing(output: Path):
    """Turn a failed write (disk full, file size limit, permissions) into one clear error.

    OpenVINO reports a failed write as RuntimeError('basic_ios::clear: iostream error') and NumPy as an
    OSError without errno ('N requested and M written'), so any failure of these steps is a write failure."""
    try:
        yield
    except (OSError, RuntimeError) as exc:
        where = output.parent if output.parent.exists() else Path.cwd()
        try:
            free = f"{shutil.disk_usage(where).free / 2**20:,.0f} MiB free there"
        except OSError:
            free = "free space unknown"
        code = getattr(exc, "errno", None)
        if code in (errno.EACCES, errno.EPERM, errno.EROFS):
            hint = "check the folder's permissions or choose another --output"
        else:
            hint = f"is the disk full? ({free}); a model needs about twice its size while it is built"
        reason = " ".join((getattr(exc, "strerror", None) or str(exc) or type(exc).__name__).split())
        kept = " (the model already there is unchanged)" if output.exists() else ""
        raise OvembedError(
            ErrorKind.UNAVAILABLE,
            f"cannot write the model for {output}: write failed ({reason}); {hint}. Nothing was published at {output}{kept}",
        ) from None


def _remove_stale(output: Path) -> None:
    """Clean up after a killed run (its process is gone): remove its staging folder, and put back a model it
    had moved aside to publish (`.NAME.previous-PID`) if nothing took its place."""
    if not output.parent.is_dir():
        return
    for stale in sorted(output.parent.glob(f".{output.name}.*-*")):
        kind, _, pid = stale.name[len(output.name) + 2:].rpartition("-")
        if kind not in ("partial", "previous") or not pid.isdigit() or int(pid) == os.getpid() or _alive(int(pid)):
            continue
        if kind == "previous" and not output.exists():
            stale.rename(output)
        else:
            shutil.rmtree(stale, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _publish(staging: Path, output: Path) -> None:
    """Move the finished folder into place; an existing model there is replaced only at the end."""
    output.parent.mkdir(parents=True, exist_ok=True)
    previous = output.parent / f".{output.name}.previous-{os.getpid()}"
    if output.exists():
        output.rename(previous)
    try:
        staging.rename(output)
    except OSError:
        if previous.exists():
            previous.rename(output)  # put the old model back
        raise
    shutil.rmtree(previous, ignore_errors=True)
