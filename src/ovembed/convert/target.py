"""Where `ovembed quantize` writes a model and whether the folder there already is that model: decided without
PyTorch, so `make serve` can ask on every run (`quantize --dry-run`, `--if-changed`) in a second."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ovembed.convert.quantize import RECIPES, UNRECORDED_RECIPES
from ovembed.errors import ErrorKind, OvembedError
from ovembed.manifest import MANIFEST_NAME, Manifest, looks_like_hub_id, resolve_alias


def hub_id(model: str, warn=print) -> str:
    """The hub id `model` names (aliases resolved, with their warning). A name that is not a folder must look like
    `org/name`: anything else is refused here, before the hub is asked."""
    model_id, warning = resolve_alias(model)
    if warning:
        warn(f"warning: {warning}")
    if not looks_like_hub_id(model_id) or model.startswith((".", "/", "~")):
        raise OvembedError(
            ErrorKind.MODEL_NOT_FOUND, f"'{model}' is neither a local folder nor a hub id like BAAI/bge-m3"
        )
    return model_id


def default_output(model_id: str, precision: str) -> Path:
    return Path("models") / f"{model_id.rstrip('/').split('/')[-1].lower()}-{precision}"


@dataclass(frozen=True)
class Target:
    """What `ovembed quantize MODEL` would make, and where."""

    source: str  # the manifest's `source`: the hub id (given or named), else the local folder's path
    folder: Path | None  # the local folder converted from; None for a hub id
    output: Path
    precision: str
    max_length: int | None = None  # None: the model's own

    @property
    def origin(self) -> str:
        """Where the weights come from: the local folder, or the hub id."""
        return str(self.folder) if self.folder else self.source


def plan(model: str, precision: str, model_id: str | None = None, output: Path | None = None,
         max_length: int | None = None, warn=print) -> Target:
    """The target of `ovembed quantize MODEL [--model-id] [--output]`, named as the conversion names it."""
    path = Path(model).expanduser()
    folder = path.resolve() if path.is_dir() else None
    named = str(folder) if folder else hub_id(model, warn)
    source = model_id or named
    return Target(source, folder, Path(output) if output else default_output(source, precision), precision, max_length)


def stale_reason(target: Target) -> str | None:
    """Why the folder at `target.output` is not the model asked for (so it must be made again), or None when it is:
    made from the same origin (folder or hub id) under the same id, at the same precision (and max length, when
    one is asked for), and, for a local folder, after that folder's files last changed."""
    if not (target.output / MANIFEST_NAME).is_file():
        return f"no model at {target.output}"
    try:
        manifest = Manifest.read(target.output)
    except OvembedError as exc:
        return str(exc)
    made_from = manifest.source_folder or manifest.source
    if (manifest.source, made_from) != (target.source, target.origin):
        came = manifest.source if made_from == manifest.source else f"{manifest.source} from {made_from}"
        return f"{target.output} was made from {came}, not {describe(target)}"
    if manifest.precision != target.precision:
        return f"{target.output} is {manifest.precision}, not {target.precision}"
    made_with = manifest.recipe or UNRECORDED_RECIPES.get(target.precision)
    if made_with != RECIPES.get(target.precision):
        return f"{target.output} was made with an older {target.precision} recipe ({made_with})"
    if target.max_length is not None and manifest.max_length != target.max_length:
        return f"{target.output} has max length {manifest.max_length}, not {target.max_length}"
    if target.folder is not None and _last_change(target.folder) > (target.output / MANIFEST_NAME).stat().st_mtime:
        return f"{target.folder} changed after {target.output} was made"
    return None


def describe(target: Target) -> str:
    return target.source if target.origin == target.source else f"{target.source} from {target.origin}"


def _last_change(folder: Path) -> float:
    """The newest modification time of the folder's files (links followed: a hub cache snapshot links its blobs)."""
    times = [p.stat().st_mtime for p in folder.rglob("*") if p.is_file()]
    return max(times, default=0.0)
