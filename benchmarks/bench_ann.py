"""Approximate search (``algorithm="ivf" | "hnsw"``): recall@10 and speed against exact search.

``ImageRetriever("precomputed", algorithm=...)`` searched through its public ``search``, beside
the exact ``algorithm="brute"`` (fp32 products) and faiss's exact ``IndexFlatIP``, in the same
run, on the data of ``bench_search.py`` (its generators, imported), cosine similarity:
``clustered`` (4,000 centres plus noise), ``digits`` (real features: the default encoder's
1280-d features of the scikit-learn digits, each row a random digit's plus noise) and
``uniform`` (random directions, the worst case of every index).

For each method: the index build time (the first query's extra work; none for exact search),
the search time of all queries (interleaved rounds, best and median), queries per second,
the speed-up over exact fp32 (medians), recall@10 against exact fp32 (share of each query's
10 exact neighbours found), and the size of the index faiss keeps (its own copy of the
gallery). The raw faiss rows are the same index's ``search`` without skretrieval's exact
re-scoring of 2k candidates: the wrapper's overhead.

    python benchmarks/bench_ann.py                                  # three kinds, default sizes
    python benchmarks/bench_ann.py --quick
    python benchmarks/bench_ann.py --data clustered --sizes 1000x200000x128 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import faiss
import numpy as np
from _machine import cpu_flags, describe
from bench_search import DEFAULT_CACHE, make_data

from skretrieval import ImageEncoder, ImageRetriever
from skretrieval.search._approximate import resolve_params

DEFAULT_SIZES = {"clustered": "1000x100000x128", "digits": "1000x50000x1280", "uniform": "1000x100000x128"}
QUICK_SIZES = {"clustered": "200x20000x64", "digits": "200x10000x1280", "uniform": "200x20000x64"}
K = 10


def retrievers(gallery):
    """name -> (fitted retriever, search-time algorithm_params or None): exact and approximate."""
    n = len(gallery)
    ivf, hnsw = resolve_params("ivf", None, n), resolve_params("hnsw", None, n)
    settings = {
        "exact fp32 (brute)": ("brute", None),
        f"ivf defaults (nlist={ivf['nlist']}, nprobe={ivf['nprobe']})": ("ivf", None),
        f"ivf nprobe={4 * ivf['nprobe']}": ("ivf", {"nprobe": 4 * ivf["nprobe"]}),
        f"hnsw defaults (M={hnsw['M']}, efSearch={hnsw['efSearch']})": ("hnsw", None),
        "hnsw efSearch=16": ("hnsw", {"efSearch": 16}),
        "hnsw efSearch=256": ("hnsw", {"efSearch": 256}),
    }
    built = {}  # one index per algorithm: the search-time options change no index
    out = {}
    for name, (algorithm, params) in settings.items():
        encoder = ImageEncoder("precomputed", device="cpu")
        if algorithm not in built:
            retriever = ImageRetriever(encoder, algorithm=algorithm, search_precision="fp32").fit(gallery)
            start = time.perf_counter()
            if algorithm == "brute":
                retriever._search_gallery()  # the resident gallery (a copy in the product dtype)
            else:
                retriever._approximate_index()  # what the first query builds
            built[algorithm] = (retriever, time.perf_counter() - start)
        retriever, build = built[algorithm]
        out[name] = (retriever, params, build if params is None else None)
    return out


def run_methods(queries, gallery):
    """name -> (callable returning (n_queries, k) indices, build seconds or None, index MiB)."""
    out = {}
    for name, (retriever, params, build) in retrievers(gallery).items():

        def search(retriever=retriever, params=params):
            retriever.set_params(algorithm_params=params)
            return retriever.search(queries, k=K)[1]

        index_mib = None
        if retriever.algorithm != "brute" and build is not None:
            index_mib = faiss.serialize_index(retriever._approximate_index().index).nbytes / 2**20
        out[name] = (search, build, index_mib)
        if retriever.algorithm != "brute" and params is None:  # the same index, raw faiss
            index = retriever._approximate_index()
            options = resolve_params(retriever.algorithm, index.built, len(gallery))
            faiss_params = (
                faiss.SearchParametersIVF(nprobe=options["nprobe"]) if retriever.algorithm == "ivf"
                else faiss.SearchParametersHNSW(efSearch=options["efSearch"])
            )
            out[f"  raw faiss {retriever.algorithm}, same options"] = (
                lambda index=index, p=faiss_params: index.index.search(queries, K, params=p)[1], None, None,
            )
    start = time.perf_counter()
    flat = faiss.IndexFlatIP(gallery.shape[1])
    flat.add(gallery)
    out["faiss IndexFlatIP (exact)"] = (lambda: flat.search(queries, K)[1], time.perf_counter() - start, None)
    return out


def bench(kind, size, repeats, features_cache):
    n_queries, n_gallery, dim = map(int, size.split("x"))
    queries, gallery = make_data(n_queries, n_gallery, dim, kind=kind, features_cache=features_cache)
    n_gallery, dim = gallery.shape
    print(f"\n### {kind}: {n_queries} queries x {n_gallery} gallery x {dim}, k={K}, cosine "
          f"({repeats} interleaved rounds)\n", flush=True)
    methods = run_methods(queries, gallery)
    times = {name: [] for name in methods}
    found = {}
    for _ in range(repeats):
        for name, (search, _, _) in methods.items():
            start = time.perf_counter()
            found[name] = search()
            times[name].append(time.perf_counter() - start)
    exact = found["exact fp32 (brute)"]
    reference = statistics.median(times["exact fp32 (brute)"])
    print("| method | build (s) | search best (s) | median (s) | queries/s | speed-up vs exact, median "
          "| recall@10 vs exact | index (MiB) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, (_, build, index_mib) in methods.items():
        best, median = min(times[name]), statistics.median(times[name])
        recall = np.mean([len(set(a) & set(b)) / K for a, b in zip(found[name], exact)])
        print(f"| {name.strip()} | {'—' if build is None else f'{build:.1f}'} | {best:.3f} | {median:.3f} | "
              f"{n_queries / best:,.0f} | {reference / median:.2f}x | {recall:.4f} | "
              f"{'—' if index_mib is None else f'{index_mib:.0f}'} |", flush=True)
    print(f"\nGallery: {gallery.nbytes / 2**20:.0f} MiB of float32.")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", choices=list(DEFAULT_SIZES), default=list(DEFAULT_SIZES))
    parser.add_argument("--sizes", nargs="+", help="NQxNGxD per kind of --data, in order")
    parser.add_argument("--quick", action="store_true", help=f"small sizes {QUICK_SIZES}")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--features-cache", default=DEFAULT_CACHE, help="the digits features (.npy)")
    args = parser.parse_args()
    sizes = args.sizes or [(QUICK_SIZES if args.quick else DEFAULT_SIZES)[kind] for kind in args.data]
    print(describe())
    print(f"bf16 matrix units: {' '.join(sorted(cpu_flags() & {'amx_bf16', 'avx512_bf16'})) or 'none'}; "
          f"faiss {faiss.__version__} ({faiss.omp_get_max_threads()} threads)")
    print("The machine may be shared with other jobs: read the ratios to exact search, measured in the "
          f"same rounds, not the times. Load average at start: {os.getloadavg()[0]:.1f}.")
    for kind, size in zip(args.data, sizes):
        bench(kind, size, args.repeats, args.features_cache)


if __name__ == "__main__":
    main()
