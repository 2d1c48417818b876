"""The search as a user gets it: a fresh process, ``ImageRetriever``'s defaults on 1000 x 200000
x 512 precomputed features (``--data clustered`` or ``uniform``, bench_search.py's data), three
``kneighbors`` calls (the first builds the search gallery and its tail bound) against faiss
``IndexFlatIP`` (``add``, then three searches) in the same process.

    python benchmarks/bench_search_default.py --data clustered
"""

import argparse
import time

import numpy as np
from _machine import describe
from bench_search import make_data


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=("clustered", "uniform"), default="clustered")
    args = parser.parse_args()
    print(describe())
    queries, gallery = make_data(1000, 200_000, 512, kind=args.data)
    import faiss

    from skretrieval import ImageRetriever

    start = time.perf_counter()
    index = faiss.IndexFlatIP(gallery.shape[1])
    index.add(gallery)
    theirs = [time.perf_counter() - start]
    retriever = ImageRetriever("precomputed").fit(gallery, np.zeros(len(gallery), dtype=int))
    ours = []
    for _ in range(3):
        start = time.perf_counter()
        _, found = retriever.kneighbors(queries, n_neighbors=10)
        ours.append(time.perf_counter() - start)
        start = time.perf_counter()
        _, reference = index.search(queries, 10)
        theirs.append(time.perf_counter() - start)
    print(f"{args.data}: ours kneighbors, calls 1-3 (s): {', '.join(f'{t:.3f}' for t in ours)}")
    print(f"faiss add {theirs[0]:.3f} s, searches 1-3 (s): {', '.join(f'{t:.3f}' for t in theirs[1:])}")
    print(f"first call vs faiss add + first search: {ours[0] / (theirs[0] + theirs[1]):.2f}x; "
          f"later calls vs faiss's: {ours[1] / theirs[2]:.2f}x, {ours[2] / theirs[3]:.2f}x; "
          f"same neighbours: {np.mean(found == reference):.4f} (the rest exact ties)")


if __name__ == "__main__":
    main()
