"""`ovembed eval`: retrieval (BEIR folders) and STS quality of one or more models, side by side, in BGE-M3's
modes: dense, sparse (lexical weights), colbert (multi-vector late interaction) and hybrid (M3's weighted sum of
the three, as FlagEmbedding's compute_score "colbert+sparse+dense").

Every mode is an exhaustive search over the corpus: each query is scored against every document, so a mode's
numbers are its own, not a rerank of another mode's candidates."""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ovembed.engine.outputs import DEFAULT_WEIGHTS, SparseVector, colbert_score, lexical_score
from ovembed.errors import validation
from ovembed.evaluate.retrieval import RetrievalSet, is_retrieval, load_retrieval, load_sts, score_run, spearman
from ovembed.rag import Embedder, LocalEmbedder, embedder_for

DEFAULT_CACHE = Path.home() / ".cache" / "ovembed" / "eval"
MODES = ("dense", "sparse", "colbert", "hybrid")
NEEDS = {"dense": {"dense"}, "sparse": {"sparse"}, "colbert": {"colbert"}, "hybrid": {"dense", "sparse", "colbert"}}
BATCH = 64
DEPTH = 100  # documents kept per query: enough for Recall@100
SCORE_CELLS = 2**24  # query-token x document-token similarities computed at once (64 MB of float32)


@dataclass
class Encoded:
    """The outputs of one model for a list of texts; a field is None when it was not asked for."""

    dense: np.ndarray | None = None
    sparse: list[SparseVector] | None = None
    colbert: list[np.ndarray] | None = None


def model_key(embedder: Embedder) -> str:
    """What identifies a model's vectors: its files' checksums when local, its id at its URL otherwise."""
    if isinstance(embedder, LocalEmbedder):
        ident = json.dumps(embedder.model.manifest.files, sort_keys=True)
    else:
        ident = json.dumps([embedder.space.model_ref, embedder.space.model_id, embedder.space.precision])
    return hashlib.sha256(ident.encode()).hexdigest()[:16]


# --- the cache: one file per (model, texts, output) -----------------------------------------------


def _save(path: Path, output: str, values) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    if output == "dense":
        np.savez(tmp, dense=values)
    elif output == "sparse":
        lengths = [len(v["indices"]) for v in values]
        np.savez(tmp, lengths=np.asarray(lengths, np.int64),
                 indices=np.asarray([i for v in values for i in v["indices"]], np.int64),
                 values=np.asarray([x for v in values for x in v["values"]], np.float32))
    else:
        np.savez(tmp, lengths=np.asarray([len(v) for v in values], np.int64),
                 vectors=np.concatenate(values) if values else np.zeros((0, 0), np.float32))
    tmp.replace(path)  # a reader never sees half a file


def _load(path: Path, output: str):
    with np.load(path) as f:
        if output == "dense":
            return f["dense"]
        cuts = np.cumsum(f["lengths"])[:-1]
        if output == "sparse":
            return [{"indices": i.tolist(), "values": v.tolist()}
                    for i, v in zip(np.split(f["indices"], cuts), np.split(f["values"], cuts))]
        return np.split(f["vectors"], cuts)


def encode(embedder: Embedder, texts: list[str], outputs: set[str], label: str, cache: Path | None,
           memo: dict | None = None) -> Encoded:
    """The asked-for outputs for texts. Those already computed in this run (`memo`) or cached on disk (per model
    and content) are reused, not computed again."""
    digest = hashlib.sha256("\x00".join(texts).encode()).hexdigest()[:24]
    memo = {} if memo is None else memo
    found = {output: memo[digest, output] for output in outputs if (digest, output) in memo}
    paths = {}
    if cache is not None:
        for output in outputs - set(found):
            paths[output] = cache / model_key(embedder) / f"{digest}.{output}.npz"
            if paths[output].is_file():
                found[output] = _load(paths[output], output)
    todo = outputs - set(found)
    if todo:
        parts = []
        for start in tqdm(range(0, len(texts), BATCH), desc=label, unit="batch", leave=False, disable=None):
            parts.append(embedder.encode(texts[start : start + BATCH], dense="dense" in todo,
                                         sparse="sparse" in todo, colbert="colbert" in todo))
        for output in todo:
            if output == "dense":
                found[output] = (np.concatenate([p[0] for p in parts]) if parts
                                 else np.zeros((0, embedder.space.dimension), np.float32))
            else:
                found[output] = [v for p in parts for v in p[1 if output == "sparse" else 2]]
            if output in paths:
                _save(paths[output], output, found[output])
    memo.update({(digest, output): value for output, value in found.items()})
    return Encoded(**found)


# --- scoring ----------------------------------------------------------------------------------------


class Scorer:
    """Scores blocks of queries against a whole corpus in one mode (or the weighted sum of all three)."""

    def __init__(self, docs: Encoded, mode: str, weights: dict[str, float]):
        self.mode, self.weights, self.docs = mode, weights, docs
        if "sparse" in NEEDS[mode]:
            self._postings = self._invert(docs.sparse)
        if "colbert" in NEEDS[mode]:
            self._tokens = np.concatenate(docs.colbert)
            self._starts = np.cumsum([0] + [len(v) for v in docs.colbert[:-1]])

    @property
    def n_docs(self) -> int:
        return len(self.docs.dense if self.docs.dense is not None else self.docs.sparse or self.docs.colbert)

    @staticmethod
    def _invert(sparse: list[SparseVector]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """token id -> (document rows, weights): a query touches only the documents sharing its tokens."""
        tokens = np.asarray([i for v in sparse for i in v["indices"]], np.int64)
        rows = np.repeat(np.arange(len(sparse)), [len(v["indices"]) for v in sparse])
        weights = np.asarray([x for v in sparse for x in v["values"]], np.float32)
        order = np.argsort(tokens, kind="stable")
        tokens, rows, weights = tokens[order], rows[order], weights[order]
        cuts = np.flatnonzero(np.diff(tokens)) + 1
        return {int(t[0]): (r, w) for t, r, w in zip(np.split(tokens, cuts), np.split(rows, cuts),
                                                      np.split(weights, cuts)) if len(t)}

    def _sparse(self, queries: list[SparseVector]) -> np.ndarray:
        out = np.zeros((len(queries), self.n_docs), np.float32)
        for row, q in enumerate(queries):
            for token, weight in zip(q["indices"], q["values"]):
                if token in self._postings:
                    rows, weights = self._postings[token]
                    np.add.at(out[row], rows, weight * weights)
        return out

    def _colbert(self, queries: list[np.ndarray]) -> np.ndarray:
        """For each query token the best token of each document (max over the document's segment), averaged."""
        out = np.zeros((len(queries), self.n_docs), np.float32)
        step = max(1, SCORE_CELLS // max(len(self._tokens), 1))
        for row, q in enumerate(queries):
            if len(q) == 0:
                continue
            best = np.zeros(self.n_docs, np.float32)
            for start in range(0, len(q), step):
                sims = q[start : start + step] @ self._tokens.T
                best += np.maximum.reduceat(sims, self._starts, axis=1).sum(axis=0)
            out[row] = best / len(q)
        return out

    def scores(self, q: Encoded) -> np.ndarray:
        """float32[len(queries), n_docs]."""
        parts = {}
        if "dense" in NEEDS[self.mode]:
            parts["dense"] = q.dense @ self.docs.dense.T
        if "sparse" in NEEDS[self.mode]:
            parts["sparse"] = self._sparse(q.sparse)
        if "colbert" in NEEDS[self.mode]:
            parts["colbert"] = self._colbert(q.colbert)
        return _combine(parts, self.mode, self.weights)


def _combine(parts: dict[str, np.ndarray], mode: str, weights: dict[str, float]) -> np.ndarray:
    """A mode's own scores, or for hybrid the weighted mean of the three (M3's compute_score)."""
    if mode != "hybrid":
        return parts[mode]
    return sum(parts[m] * w for m, w in weights.items()) / sum(weights.values())


def top_documents(scores: np.ndarray, doc_ids: list[str], depth: int = DEPTH) -> list[list[str]]:
    """Each row's best `depth` documents, best first; equal scores keep corpus order."""
    order = np.argsort(-scores, axis=1, kind="stable")[:, :depth]
    return [[doc_ids[j] for j in row] for row in order]


def _slice(enc: Encoded, start: int, end: int) -> Encoded:
    return Encoded(None if enc.dense is None else enc.dense[start:end],
                   None if enc.sparse is None else enc.sparse[start:end],
                   None if enc.colbert is None else enc.colbert[start:end])


def pair_scores(a: Encoded, b: Encoded, mode: str, weights: dict[str, float]) -> np.ndarray:
    """Score of a[i] against b[i] for every i (STS)."""
    parts = {}
    if "dense" in NEEDS[mode]:
        parts["dense"] = np.sum(a.dense * b.dense, axis=1)
    if "sparse" in NEEDS[mode]:
        parts["sparse"] = np.array([lexical_score(x, y) for x, y in zip(a.sparse, b.sparse)])
    if "colbert" in NEEDS[mode]:
        parts["colbert"] = np.array([colbert_score(x, y) for x, y in zip(a.colbert, b.colbert)])
    return _combine(parts, mode, weights)


# --- datasets and runs --------------------------------------------------------------------------------


def dataset_name(folder: Path) -> str:
    return f"{folder.parent.name}/{folder.name}"


def cross_lingual_pairs(folders: list[Path]) -> list[tuple[Path, Path]]:
    """(queries folder, corpus folder) for every ordered pair of retrieval folders of the same collection
    (siblings, e.g. xquad/de and xquad/en): their ids are shared, so one's qrels hold for the other's corpus."""
    retrieval = [f for f in folders if is_retrieval(f)]
    return [(q, c) for q in retrieval for c in retrieval if q != c and q.parent.resolve() == c.parent.resolve()]


def modes_for(embedder: Embedder, wanted: list[str]) -> list[str]:
    have = {"dense", *embedder.outputs}
    return [m for m in wanted if NEEDS[m] <= have]


def evaluate(models: list[str], datasets: list[str], k: int = 10, cache: Path | None = DEFAULT_CACHE,
             api_key: str | None = None, modes: list[str] | tuple[str, ...] = ("dense",), cross_lingual: bool = False,
             weights: dict[str, float] | None = None) -> list[dict]:
    """One row per (model, dataset, mode). Modes a model lacks (MiniLM has no sparse or ColBERT output) are
    skipped with a note on stderr; asking for a mode no model has is an error."""
    weights = dict(DEFAULT_WEIGHTS if weights is None else weights)
    if k < 1:
        raise validation(f"--k must be 1 or more, not {k}")
    folders = [Path(d) for d in datasets]
    for folder in folders:
        if not folder.is_dir():
            raise validation(f"{folder}: not a folder (a BEIR folder or an STS folder with pairs.tsv)")
    runs = [(f, f) for f in folders] + (cross_lingual_pairs(folders) if cross_lingual else [])
    if cross_lingual and len(runs) == len(folders):
        raise validation("--cross-lingual needs two or more retrieval folders of one collection, e.g. xquad/de and "
                         "xquad/en")
    sets: dict[Path, RetrievalSet] = {f: load_retrieval(f) for f in folders if is_retrieval(f)}
    sts = {f: load_sts(f) for f in folders if f not in sets}
    rows = []
    for spec in models:
        embedder = embedder_for(spec, api_key)
        label = embedder.space.name
        usable = modes_for(embedder, list(modes))
        for skipped in (m for m in modes if m not in usable):
            missing = "/".join(sorted(NEEDS[skipped] - {"dense", *embedder.outputs}))
            print(f"ovembed eval: {label} has no {missing} output; mode {skipped} skipped", file=sys.stderr)
        memo: dict = {}  # outputs computed for this model in this run (a corpus serves several query sets)
        outputs = set().union(*(NEEDS[m] for m in usable)) if usable else set()
        for queries_from, corpus_from in runs:
            if not usable:
                break
            name = dataset_name(corpus_from) if queries_from == corpus_from else \
                f"{dataset_name(queries_from)}→{corpus_from.name}"
            if corpus_from in sets:
                rows += _retrieval_rows(embedder, sets[queries_from], sets[corpus_from], name, usable, outputs,
                                        k, cache, weights, memo)
            else:
                first, second, gold = sts[corpus_from]
                a = encode(embedder, first, outputs, f"{label} {name} a", cache, memo)
                b = encode(embedder, second, outputs, f"{label} {name} b", cache, memo)
                for mode in usable:
                    rows.append({"model": label, "dataset": name, "mode": mode,
                                 "spearman": round(spearman(pair_scores(a, b, mode, weights), gold), 4)})
    if models and not rows and folders:
        raise validation(f"no model given has the outputs for mode(s) {', '.join(modes)}")
    return rows


def _retrieval_rows(embedder: Embedder, queries_set: RetrievalSet, corpus_set: RetrievalSet, name: str,
                    modes: list[str], outputs: set[str], k: int, cache: Path | None,
                    weights: dict[str, float], memo: dict) -> list[dict]:
    label = embedder.space.name
    doc_ids = list(corpus_set.corpus)
    qrels = queries_set.qrels
    shared = sum(d in corpus_set.corpus for rel in qrels.values() for d in rel)
    if shared < 0.9 * sum(len(rel) for rel in qrels.values()):
        raise validation(f"{name}: the queries' qrels name documents missing from the corpus; a cross-lingual run "
                         "needs collections with shared ids (as XQuAD's languages)")
    qids = list(qrels)
    docs = encode(embedder, [corpus_set.corpus[d] for d in doc_ids], outputs, f"{label} {name} corpus", cache, memo)
    queries = encode(embedder, [queries_set.queries[q] for q in qids], outputs, f"{label} {name} queries", cache,
                     memo)
    rows = []
    for mode in modes:
        scorer = Scorer(docs, mode, weights)
        run = {}
        for start in range(0, len(qids), 256):
            block = _slice(queries, start, start + 256)
            run.update(zip(qids[start : start + 256], top_documents(scorer.scores(block), doc_ids, max(DEPTH, k))))
        metrics = score_run(run, qrels, k)
        rows.append({"model": label, "dataset": name, "mode": mode, **{m: round(v, 4) for m, v in metrics.items()}})
    return rows


def table(rows: list[dict]) -> str:
    """Markdown: one line per dataset and mode, one column per model, with the change against the first model."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    lines = ["| dataset | mode | metric | " + " | ".join(models) + " |", "|---|---|---|" + "---|" * len(models)]
    for dataset, mode in dict.fromkeys((r["dataset"], r["mode"]) for r in rows):
        by_model = {r["model"]: r for r in rows if r["dataset"] == dataset and r["mode"] == mode}
        metric = "spearman" if "spearman" in next(iter(by_model.values())) else \
            next(m for m in next(iter(by_model.values())) if m.startswith("ndcg@"))
        base = by_model.get(models[0], {}).get(metric)
        cells = []
        for m in models:
            value = by_model.get(m, {}).get(metric)
            change = f" ({(value - base) / base:+.1%})" if base and value is not None and m != models[0] else ""
            cells.append("–" if value is None else f"{value:.4f}{change}")
        lines.append(f"| {dataset} | {mode} | {metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(rows: list[dict], command: str) -> str:
    """A Markdown report that says how it was made: the command, the date, the machine, the models, the table."""
    import datetime

    import openvino

    from ovembed.evaluate.bench import machine

    m = machine()
    lines = [
        "# Retrieval quality", "",
        f"Made by `{command}` on {datetime.date.today().isoformat()}; {m['cpu']}, {m['cores']} cores "
        f"({', '.join(m['isa']) or 'no VNNI/AMX'}), {m['memory_gb']} GB, Python {m['python']}, "
        f"OpenVINO {openvino.__version__}.", "",
        "nDCG@10 for retrieval (BEIR/MTEB definition), Spearman of the score vs the gold similarity for STS; "
        "in brackets the change against the first model. `a→b`: queries of `a` against the corpus of `b`.", "",
        table(rows), "",
        "<details><summary>Every metric</summary>", "",
        "| model | dataset | mode | ndcg@10 | recall@10 | recall@100 | mrr@10 | spearman |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [r.get(k) for k in ("ndcg@10", "recall@10", "recall@100", "mrr@10", "spearman")]
        lines.append(f"| {r['model']} | {r['dataset']} | {r['mode']} | "
                     + " | ".join("" if c is None else f"{c:.4f}" for c in cells) + " |")
    return "\n".join([*lines, "", "</details>", ""])
