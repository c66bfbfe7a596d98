"""The measurements: text->image and image->text retrieval, zero-shot classification, and an
image->image self-check, each through the production encoder and the index's `search`.

Every query asks the backend for one result more than the largest K reported, so the
pessimistic tie rule in `eval.metrics` can tell a tie that stops at K from one that runs past it.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Sequence

import numpy as np

from clipsearch.config import LimitSettings
from clipsearch.errors import ClipsearchError
from clipsearch.images import read_image_file
from clipsearch.index.faiss_index import FaissIndex
from eval.collection import Collection
from eval.datasets import CaptionDataset, ImageItem, LabelledDataset
from eval.metrics import precision_at_k, recall_at_k, relevant_rank

TEXT_BATCH = 256
IMAGE_BATCH = 32


class Timer:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def add(self, name: str, t0: float) -> None:
        self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - t0, 3)


def encode_texts(encoder, texts: Sequence[str], batch: int = TEXT_BATCH) -> np.ndarray:
    """All texts in batches (one call per `batch` texts, not one per caption)."""
    parts = [encoder.encode_text(list(texts[i : i + batch])) for i in range(0, len(texts), batch)]
    return np.concatenate(parts) if parts else np.zeros((0, encoder.dim), dtype=np.float32)


def search_ranks(index, vectors: Iterable[np.ndarray], relevant: Iterable[set[str]], k_fetch: int, ties: str,
                 keep: list | None = None) -> list[int | None]:
    """The relevant rank of each query; `keep`, if given, collects each query's ranking."""
    total = index.count()
    ranks = []
    for vector, rel in zip(vectors, relevant):
        hits = index.search(vector, k=k_fetch)
        ranking = [(h.id, h.score) for h in hits]
        ranks.append(relevant_rank(ranking, rel, ties=ties, truncated=len(hits) == k_fetch < total))
        if keep is not None:
            keep.append(ranking)
    return ranks


def memory_index(ids: Sequence[str], vectors: np.ndarray, model_id: str) -> FaissIndex:
    """An in-memory exact embedded index, for the directions whose targets are texts."""
    from clipsearch.index.base import Document

    index = FaissIndex(None, model_id=model_id, dim=vectors.shape[1], hnsw_threshold=2**62)
    index.upsert(Document(i, v) for i, v in zip(ids, vectors))
    return index


def stored_vector(index, doc_id: str, cache: dict[str, np.ndarray]) -> np.ndarray:
    if doc_id not in cache:
        cache[doc_id] = index.get(doc_id).vector
    return cache[doc_id]


def agreement_with_exact(index, vectors: Sequence[np.ndarray], rankings: Sequence, ks: Sequence[int],
                         model_id: str) -> dict[str, float]:
    """How much of the exact top-K the backend returned (mean |backend ∩ exact| / K) for the same
    queries, exact search running over the vectors the index stores: 1.0 on an exact index,
    below it by what HNSW or compressed vectors cost, whatever the dataset's ground truth."""
    ids = index.ids()
    exact = memory_index(ids, np.stack([index.get(i).vector for i in ids]), model_id)
    k_max = max(ks)
    sums = dict.fromkeys(ks, 0.0)
    for vector, ranking in zip(vectors, rankings):
        truth = [h.id for h in exact.search(vector, k=k_max)]
        for k in ks:
            want = set(truth[:k])
            sums[k] += len(want & {key for key, _ in ranking[:k]}) / max(1, len(want))
    return {f"overlap@{k}": sums[k] / len(rankings) if rankings else float("nan") for k in ks}


def _named(values: dict[int, float], prefix: str) -> dict[str, float]:
    return {f"{prefix}{k}": v for k, v in values.items()}


# -- captioned image sets -------------------------------------------------------------------
def evaluate_retrieval(ds: CaptionDataset, coll: Collection, index, encoder, *, ks: Sequence[int], ties: str,
                       image_to_text: bool = True, vs_exact: bool = False,
                       timer: Timer | None = None) -> tuple[dict, dict]:
    timer = timer or Timer()
    k_fetch = max(ks) + 1
    captions = [c for c in ds.captions if c.image in coll.doc_of]
    t0 = time.perf_counter()
    vectors = encode_texts(encoder, [c.text for c in captions])
    timer.add("encode_text", t0)

    t0 = time.perf_counter()
    rankings: list = []
    ranks = search_ranks(index, vectors, ({coll.doc_of[c.image]} for c in captions), k_fetch, ties, keep=rankings)
    timer.add("search_text_to_image", t0)
    metrics = {"text_to_image": _named(recall_at_k(ranks, ks), "R@")}
    if vs_exact:
        t0 = time.perf_counter()
        metrics["text_to_image_vs_exact"] = agreement_with_exact(index, vectors, rankings, ks, encoder.model_id)
        timer.add("exact_comparison", t0)

    if image_to_text and captions:
        t0 = time.perf_counter()
        caption_ids = [str(i) for i in range(len(captions))]
        by_doc: dict[str, set[str]] = {}
        for cid, c in zip(caption_ids, captions):
            by_doc.setdefault(coll.doc_of[c.image], set()).add(cid)
        texts = memory_index(caption_ids, vectors, encoder.model_id)
        cache: dict[str, np.ndarray] = {}
        items = [i for i in ds.images if i.key in coll.doc_of]
        i2t = search_ranks(texts, (stored_vector(index, coll.doc_of[i.key], cache) for i in items),
                           (by_doc[coll.doc_of[i.key]] for i in items), k_fetch, ties)
        timer.add("search_image_to_text", t0)
        metrics["image_to_text"] = _named(recall_at_k(i2t, ks), "R@")
    counts = {"captions": len(ds.captions), "text_queries": len(captions),
              "captions_of_unindexed_images": len(ds.captions) - len(captions)}
    return metrics, counts


def evaluate_by_language(ds: CaptionDataset, coll: Collection, index, encoder, *, ks: Sequence[int], ties: str,
                         image_to_text: bool = True, vs_exact: bool = False,
                         timer: Timer | None = None) -> tuple[dict, dict]:
    """A multilingual set (Crossmodal-3600): text->image for each caption language on its own, as
    groups "text_to_image[xx]" with the mean of the R@K beside them; image->text only when one
    language is measured (captions of several languages would compete as targets)."""
    timer = timer or Timer()
    languages = sorted({c.language for c in ds.captions if c.language})
    metrics: dict = {}
    counts: dict = {"captions": len(ds.captions), "languages": len(languages)}
    for lang in languages:
        sub = dataclasses.replace(ds, captions=[c for c in ds.captions if c.language == lang])
        m, c = evaluate_retrieval(sub, coll, index, encoder, ks=ks, ties=ties, vs_exact=vs_exact, timer=timer,
                                  image_to_text=image_to_text and len(languages) == 1)
        for group, values in m.items():
            if group == "text_to_image":
                values = {**values, "mean": float(np.mean(list(values.values())))}
            metrics[f"{group}[{lang}]"] = values
        counts[f"text_queries[{lang}]"] = c["text_queries"]
    return metrics, counts


# -- labelled folders -----------------------------------------------------------------------
def class_texts(classes: Sequence[str], prompt: str) -> list[str]:
    return [prompt.replace("{}", c) for c in classes]  # not format(): other braces stay literal


def evaluate_zeroshot(ds: LabelledDataset, coll: Collection, index, encoder, *, ks: Sequence[int], ties: str,
                      prompt: str = "{}", vs_exact: bool = False, timer: Timer | None = None) -> tuple[dict, dict]:
    """rclip's measure (each image ranks every class text; right when its class is in the top K)
    and the search-engine view of it (each class text queries the index; a hit when the top K
    results hold an image of that class, with precision@K beside it)."""
    timer = timer or Timer()
    t0 = time.perf_counter()
    vectors = encode_texts(encoder, class_texts(ds.classes, prompt))
    timer.add("encode_text", t0)
    items = [i for i in ds.images if i.key in coll.doc_of]

    t0 = time.perf_counter()
    classes = memory_index(ds.classes, vectors, encoder.model_id)
    cache: dict[str, np.ndarray] = {}
    class_k = min(max(ks) + 1, len(ds.classes))
    cls_ranks = search_ranks(classes, (stored_vector(index, coll.doc_of[i.key], cache) for i in items),
                             ({ds.labels[i.key]} for i in items), class_k, ties)
    timer.add("classify", t0)

    t0 = time.perf_counter()
    docs_of_class: dict[str, set[str]] = {}
    for item in items:
        docs_of_class.setdefault(ds.labels[item.key], set()).add(coll.doc_of[item.key])
    queried = [n for n, c in enumerate(ds.classes) if c in docs_of_class]
    rankings: list = []
    q_ranks = search_ranks(index, (vectors[n] for n in queried), (docs_of_class[ds.classes[n]] for n in queried),
                           max(ks) + 1, ties, keep=rankings)
    timer.add("search_class_queries", t0)
    precision = {f"P@{k}": float(np.mean([precision_at_k(r, docs_of_class[ds.classes[n]], k)
                                          for n, r in zip(queried, rankings)])) if rankings else float("nan")
                 for k in ks}
    metrics = {
        "zero_shot": _named(recall_at_k(cls_ranks, [k for k in ks if k <= len(ds.classes)]), "top-"),
        "class_query": {**_named(recall_at_k(q_ranks, ks), "hit@"), **precision},
    }
    if vs_exact:
        t0 = time.perf_counter()
        metrics["class_query_vs_exact"] = agreement_with_exact(index, [vectors[n] for n in queried], rankings, ks,
                                                               encoder.model_id)
        timer.add("exact_comparison", t0)
    counts = {"classes": len(ds.classes), "image_queries": len(items),
              "class_queries": len(queried)}
    return metrics, counts


# -- image->image self-check ----------------------------------------------------------------
def self_check(items: Sequence[ImageItem], coll: Collection, index, encoder, limits: LimitSettings, *, n: int,
               ks: Sequence[int], ties: str, timer: Timer | None = None) -> tuple[dict[str, float], int]:
    """Re-encode up to `n` dataset images from their files and search with them: each should
    find its own document first. R@1 below 1.0 on an exact index means hits are mapped back to
    the wrong items, or ingest and the query path encode differently; on HNSW or compressed
    vectors it is also what the approximation costs."""
    timer = timer or Timer()
    indexed = [i for i in items if i.key in coll.doc_of]
    if n <= 0 or not indexed:
        return {}, 0
    step = max(1, len(indexed) // n)
    sample = indexed[::step][:n]
    t0 = time.perf_counter()
    images, keys = [], []
    for item in sample:
        try:
            images.append(read_image_file(item.path, max_bytes=limits.max_image_bytes,
                                          max_pixels=limits.max_image_pixels))
            keys.append(item.key)
        except (ClipsearchError, OSError):
            continue  # unreadable now (changed or removed since ingest): not a retrieval result
    vectors = np.concatenate([encoder.encode_images(images[i : i + IMAGE_BATCH])
                              for i in range(0, len(images), IMAGE_BATCH)]) if images else []
    ranks = search_ranks(index, vectors, ({coll.doc_of[k]} for k in keys), max(ks) + 1, ties)
    timer.add("self_check", t0)
    return _named(recall_at_k(ranks, ks), "R@"), len(keys)
