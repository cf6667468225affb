# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""The global descriptors' index: exact (``flat``), a graph (``hnsw``), or inverted lists (``ivf``)
for maps of a city: ``ivf`` clusters the descriptors into about 4 sqrt(N) lists when the map is
first written and searches the ``NPROBE`` lists nearest to a query, exactly within them (recall@32
against exact search and speed at a million places: doc/maps.md). While an ``ivf`` map is built
in memory it is searched exactly; appended places go to the lists of their nearest centroid."""
from __future__ import annotations

import math

import faiss
import numpy as np

__all__ = ["INDEX_TYPES", "NPROBE", "make_index", "prepared", "search", "stored_vectors", "trained"]

INDEX_TYPES = ("flat", "hnsw", "ivf")
NPROBE = 64  # lists searched per query in an ivf index
TRAIN_POINTS = 200_000  # descriptors the lists' centroids are fitted on, at most


def make_index(dim: int, index_type: str):
    """An empty index; ``ivf`` starts exact and is clustered when the map is written (``trained``)."""
    if index_type in ("flat", "ivf"):
        return faiss.IndexFlatIP(dim)
    if index_type == "hnsw":
        return faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
    raise ValueError(f"unknown index type {index_type!r}; choose {', '.join(INDEX_TYPES)}")


def trained(index, index_type: str, seed: int = 0):
    """The index as it is written: for ``ivf``, inverted lists fitted on its own descriptors."""
    if index_type != "ivf" or isinstance(index, faiss.IndexIVF) or index.ntotal == 0:
        return index
    n, dim = index.ntotal, index.d
    lists = max(1, min(n // 39, int(4 * math.sqrt(n))))
    vectors = stored_vectors(index, np.arange(n))
    sample = vectors[np.random.default_rng(seed).choice(n, min(n, TRAIN_POINTS), replace=False)]
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, lists, faiss.METRIC_INNER_PRODUCT)
    ivf.train(np.ascontiguousarray(sample))
    for start in range(0, n, 65536):
        ivf.add(np.ascontiguousarray(vectors[start:start + 65536]))
    return prepared(ivf)


def prepared(index):
    """An index read from a file, ready to query: ivf lists answer ``reconstruct`` and probe NPROBE."""
    if isinstance(index, faiss.IndexIVF):
        index.make_direct_map()
        index.nprobe = min(NPROBE, index.nlist)
    return index


def stored_vectors(index, ids: np.ndarray) -> np.ndarray:
    """(len(ids), D) float32 stored descriptors."""
    ids = np.asarray(ids, dtype=np.int64)
    if isinstance(index, faiss.IndexFlat) and ids.size == index.ntotal and (ids == np.arange(ids.size)).all():
        return faiss.rev_swig_ptr(index.get_xb(), index.ntotal * index.d).reshape(index.ntotal, index.d).copy()
    return np.stack([index.reconstruct(int(i)) for i in ids]) if ids.size else np.zeros((0, index.d), np.float32)


def search(index, queries: np.ndarray, k: int, exclude_ids: np.ndarray | None = None):
    """(similarities, ids) of the top ``k``; ``exclude_ids`` skipped inside FAISS."""
    if exclude_ids is None or len(exclude_ids) == 0:
        return index.search(queries, k)
    excluded = np.ascontiguousarray(exclude_ids, dtype=np.int64)
    selector = faiss.IDSelectorNot(faiss.IDSelectorBatch(len(excluded), faiss.swig_ptr(excluded)))
    if isinstance(index, faiss.IndexHNSW):
        params = faiss.SearchParametersHNSW(sel=selector)
    elif isinstance(index, faiss.IndexIVF):
        params = faiss.SearchParametersIVF(sel=selector, nprobe=index.nprobe)
    else:
        params = faiss.SearchParameters(sel=selector)
    return index.search(queries, k, params=params)
