"""The engine: tokenize -> token-budget batches -> OpenVINO -> dense | sparse | colbert."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from ovembed.engine.batcher import TokenBudget, plan_batches
from ovembed.engine.outputs import Embeddings, colbert_vectors, l2_normalize, lexical_weights
from ovembed.engine.runtime import (
    KERNEL_CACHE,
    SHAPE_CACHE,
    Runtime,
    TokenTable,
    drop_mapped_weights,
    openvino_reason,
    read_model,
)
from ovembed.engine.tokenize import TextTokenizer
from ovembed.errors import ErrorKind, OvembedError, validation
from ovembed.manifest import MODEL_BIN, MODEL_XML, Manifest

log = logging.getLogger("ovembed.engine")

PAD_MULTIPLE = 8


class EmbeddingModel:
    def __init__(
        self,
        folder: str | Path,
        budget: TokenBudget | None = None,
        performance_hint: str = "LATENCY",
        infer_requests: int | None = None,
        inference_precision: str | None = None,
        check_files: bool = True,
        verify_checksums: bool = True,
        shape_cache: int = SHAPE_CACHE,
        kernel_cache: int = KERNEL_CACHE,
        lanes: int = 1,
        threads: int | None = None,
    ):
        """threads: OpenVINO's inference threads per lane (default: all cores; a Ray actor: its CPUs).
        lanes: 2 compiles the model twice, so short work runs beside a long batch instead of after it (the
        batcher's short lane; its memory: docs/reliability.md#5-memory-and-how-to-size-a-machine).
        check_files: refuse missing files or sizes that differ from the manifest; verify_checksums: also
        hash each file against the manifest (its cost at load: docs/reliability.md#3-faults)."""
        self.folder = Path(folder)
        self.manifest = Manifest.read(self.folder)
        if check_files:
            self.manifest.check_files(self.folder, checksums=verify_checksums)
        self.budget = budget or TokenBudget()
        self.tokenizer = TextTokenizer(self.folder, self.manifest.max_length)
        self.table = TokenTable(self.folder)
        if inference_precision is None and self.manifest.precision in ("fp32", "int8"):
            # On CPUs with AMX/AVX512-BF16 OpenVINO runs the float parts in bf16 by default. For fp32
            # that breaks the precision promise; for static int8, bf16 made some texts' vectors depend
            # on the rest of a large batch, for a small speed gain (figures:
            # docs/benchmarks.md#what-the-figures-say). int8-weights and fp16 keep bf16: there it is
            # where their speed comes from.
            inference_precision = "f32"
        if lanes not in (1, 2):
            raise validation(f"lanes must be 1 or 2, not {lanes}")
        graph = read_model(self.folder / MODEL_XML) if lanes > 1 else self.folder / MODEL_XML
        self.runtimes = [
            Runtime(
                graph,
                performance_hint=performance_hint,
                infer_requests=infer_requests,
                inference_precision=inference_precision,
                shape_cache=shape_cache,
                kernel_cache=kernel_cache,
                threads=threads,
            )
            for _ in range(lanes)
        ]
        del graph  # the compiled models keep what they need
        self.runtime = self.runtimes[0]
        self._special_ids = np.asarray(self.manifest.special_token_ids, dtype=np.int64)
        # One small call per lane prepares the kernels and copies the weights into their layout; the mapped
        # original is then dropped from RSS (drop_mapped_weights).
        try:
            for lane in range(lanes):
                self.embed_tokens([[0, 0]], ["dense"], lane=lane)
        except OvembedError as exc:  # a model that cannot run even this fails on its requests, with their ids
            log.warning("%s: the warm-up call failed: %s", self.folder, exc)
        else:
            self.drop_mapped_weights()

    def drop_mapped_weights(self) -> int:
        """Forget the resident pages of the memory-mapped IR weights (runtime.drop_mapped_weights); bytes mapped."""
        return drop_mapped_weights(self.folder / MODEL_BIN)

    @property
    def lanes(self) -> int:
        """Runtimes that can run at once (1: every call shares one)."""
        return len(self.runtimes)

    def _runtime(self, lane: int) -> Runtime:
        """The lane's runtime; with one runtime, every lane's."""
        return self.runtimes[min(lane, len(self.runtimes) - 1)]

    def release_buffers(self, lane: int = 0, above_tokens: int = 0) -> bool:
        """Give back a lane's intermediate buffers if its largest batch since the last release had more than
        `above_tokens` padded tokens (Runtime.release), and forget the mapped weights' pages again (preparing
        kernels for new shapes may have read some); True if they were released."""
        runtime = self._runtime(lane)
        if runtime.held_tokens <= above_tokens:
            return False
        runtime.release()
        self.drop_mapped_weights()
        return True

    @property
    def dimension(self) -> int:
        return self.manifest.dimension

    @property
    def outputs(self) -> list[str]:
        return list(self.manifest.outputs)

    def require_outputs(self, wanted: list[str]) -> None:
        if not wanted:
            raise validation("ask for at least one output: dense, sparse or colbert")
        missing = [name for name in wanted if name not in self.manifest.outputs]
        if missing:
            raise validation(
                f"model {self.manifest.name} has no {', '.join(missing)} output "
                f"(it has: {', '.join(self.manifest.outputs)})"
            )

    def tokenize(self, texts: Sequence[str], truncate: bool = True) -> list[list[int]]:
        return self.tokenizer.encode(_check_texts(texts), truncate=truncate)

    def embed(
        self,
        texts: Sequence[str],
        dense: bool = True,
        sparse: bool = False,
        colbert: bool = False,
        normalize: bool = True,
        truncate: bool = True,
    ) -> Embeddings:
        wanted = [name for name, on in (("dense", dense), ("sparse", sparse), ("colbert", colbert)) if on]
        self.require_outputs(wanted)
        ids = self.tokenize(texts, truncate=truncate)
        return self.embed_tokens(ids, wanted, normalize=normalize)

    def embed_tokens(self, ids: list[list[int]], wanted: list[str], normalize: bool = True, lane: int = 0) -> Embeddings:
        """Embed already tokenized texts (what the service's batcher calls); `lane` picks the runtime when the
        model has two (0: bulk, 1: short work), and the same runtime otherwise."""
        n = len(ids)
        lengths = [len(x) for x in ids]
        batches = plan_batches(lengths, self.budget)
        try:
            raw = self._runtime(lane).run(self._feeds(ids, batches), wanted)
        except RuntimeError as exc:
            raise OvembedError(ErrorKind.BACKEND, f"inference failed: {openvino_reason(exc)}") from None

        result = Embeddings(
            dense=np.zeros((n, self.manifest.dimension), np.float32) if "dense" in wanted else None,
            sparse=[None] * n if "sparse" in wanted else None,  # type: ignore[list-item]
            colbert=[None] * n if "colbert" in wanted else None,  # type: ignore[list-item]
            token_counts=lengths,
        )
        for batch, out in zip(batches, raw):
            if result.dense is not None:
                vecs = out["dense"]
                result.dense[batch] = l2_normalize(vecs) if normalize else vecs
            for row, index in enumerate(batch):
                if result.sparse is not None:
                    result.sparse[index] = lexical_weights(out["sparse"][row], ids[index], self._special_ids)
                if result.colbert is not None:
                    result.colbert[index] = colbert_vectors(out["colbert"][row], lengths[index], normalize)
        return result

    def _feeds(self, ids: list[list[int]], batches: list[list[int]]) -> Iterator[dict[str, np.ndarray]]:
        pad = self.manifest.pad_token_id
        for batch in batches:
            # Padded to a multiple of 8 tokens: 8x fewer distinct shapes for OpenVINO to prepare and cache,
            # for 3.5 padding tokens per batch on average (masked, so no output changes).
            longest = max(len(ids[i]) for i in batch)
            longest = max(longest, min(-(-longest // PAD_MULTIPLE) * PAD_MULTIPLE, self.manifest.max_length))
            token_ids = np.full((len(batch), longest), pad, dtype=np.int64)
            mask = np.zeros((len(batch), longest), dtype=np.int64)
            for row, index in enumerate(batch):
                token_ids[row, : len(ids[index])] = ids[index]
                mask[row, : len(ids[index])] = 1
            yield {"inputs_embeds": self.table.lookup(token_ids), "attention_mask": mask}


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise validation("texts must be a list of strings")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise validation(f"text {i} is {type(text).__name__}, not a string")
    return list(texts)


def load_model(folder: str | Path, **options) -> EmbeddingModel:
    """Load a model folder made by `ovembed quantize` (see EmbeddingModel for options)."""
    return EmbeddingModel(folder, **options)
