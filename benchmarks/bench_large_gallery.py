"""Large galleries: in-memory vs memory-mapped vs float16 storage, beside faiss.

Generates ``--n`` x ``--dim`` clustered features (bench_search.py's generator: 4,000
standard-normal centres, 0.35 noise, L2-normalised), written in 100,000-row chunks to a
float32 and a float16 ``.npy`` in ``--dir`` (so this script never holds two copies of
the gallery), then searches ``--queries`` queries of the same distribution for their
``--k`` nearest (cosine) with ``ImageRetriever("precomputed")`` fitted on:

- ``in-memory float32``: ``np.load(path)``, the gallery in RAM (plus the resident prepared copy);
- ``memory-mapped float32``: ``np.load(path, mmap_mode="r")``, kept on disk, streamed;
- ``float16 in memory``: the memory-mapped float32 file fitted with ``gallery_dtype="float16"``;
- ``memory-mapped float16``: the float16 file, memory-mapped, ``gallery_dtype="float16"``;

and ``faiss.IndexFlatIP`` holding the gallery in memory (added in blocks read from the file).
Each method runs in its own process (so its peak resident memory is its own), once per
round, rounds interleaved; a process times its first search (which prepares the gallery:
the resident copy, or the streamed statistics pass) and its best of ``--repeats`` more.
Memory: VmHWM of the process, and its growth over the process after imports.

The files are read from the page cache when it holds them (a second search of a file
this machine has just read); a cold file runs at the disk's speed.

``--loss`` measures what float16 storage costs on real features instead: the default
encoder's features of the 1,797 digits (bench_search.py's cache), leave-one-out Recall@1
with float32 and float16 storage, and the top-10 overlap between the two on a 200,000 x
1280 gallery of digit features plus noise (bench_search.py's ``digits`` data).

    python benchmarks/bench_large_gallery.py                    # 5,000,000 x 128
    python benchmarks/bench_large_gallery.py --n 1000000 --rounds 1
    python benchmarks/bench_large_gallery.py --loss
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
from _machine import describe
from bench_search import N_CENTRES, NOISE, _around, digits_features, make_data

METHODS = ("faiss IndexFlatIP", "in-memory float32", "memory-mapped float32", "float16 in memory", "memory-mapped float16")


def write_gallery(directory, n, dim, seed=0, chunk=100_000):
    """The float32 and float16 ``.npy`` files of the clustered gallery, and the queries' centres."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((N_CENTRES, dim), dtype=np.float32)
    paths = {dtype: os.path.join(directory, f"gallery_{dtype}.npy") for dtype in ("float32", "float16")}
    files = {dtype: open(path, "wb") for dtype, path in paths.items()}
    try:
        for dtype, file in files.items():
            header = {"descr": np.dtype(dtype).str, "fortran_order": False, "shape": (n, dim)}
            np.lib.format.write_array_header_2_0(file, header)
        for start in range(0, n, chunk):
            block = _around(rng, centres, NOISE, min(chunk, n - start))
            for dtype, file in files.items():
                file.write(block.astype(dtype).tobytes())
    finally:
        for file in files.values():
            file.close()
    return paths, centres


def _status_mib(field):
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":")) / 1024


def child(method, paths, queries_path, k, repeats, out_path):
    """One method in this process: fit/build, first search, best of ``repeats``; prints JSON."""
    import faiss

    from skretrieval import ImageRetriever
    from skretrieval.search._storage import read_blocks

    queries = np.load(queries_path)
    baseline = _status_mib("VmRSS")
    start = time.perf_counter()
    if method == "faiss IndexFlatIP":
        mapped = np.load(paths["float32"], mmap_mode="r")
        index = faiss.IndexFlatIP(mapped.shape[1])
        for _, block in read_blocks(mapped, 1 << 18):  # file reads: no mapped pages kept
            index.add(block)
        search = lambda: index.search(queries, k)[1]  # noqa: E731
    else:
        if method == "in-memory float32":
            gallery, dtype = np.load(paths["float32"]), "float32"
        elif method == "memory-mapped float32":
            gallery, dtype = np.load(paths["float32"], mmap_mode="r"), "float32"
        elif method == "float16 in memory":
            gallery, dtype = np.load(paths["float32"], mmap_mode="r"), "float16"
        else:
            gallery, dtype = np.load(paths["float16"], mmap_mode="r"), "float16"
        retriever = ImageRetriever("precomputed", topk=k, gallery_dtype=dtype).fit(gallery)
        search = lambda: retriever.kneighbors(queries)[1]  # noqa: E731
    setup = time.perf_counter() - start
    start = time.perf_counter()
    indices = search()
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        indices = search()
        times.append(time.perf_counter() - start)
    np.save(out_path, indices)
    peak = _status_mib("VmHWM")
    print(json.dumps({"setup": setup, "first": first, "best": min(times), "peak": peak, "growth": peak - baseline}))


def bench(args):
    directory = tempfile.mkdtemp(prefix="bench_large_", dir=args.dir)
    try:
        start = time.perf_counter()
        paths, centres = write_gallery(directory, args.n, args.dim)
        queries = _around(np.random.default_rng(1), centres, NOISE, args.queries)
        queries_path = os.path.join(directory, "queries.npy")
        np.save(queries_path, queries)
        print(f"wrote {args.n} x {args.dim} (float32 {os.path.getsize(paths['float32']) / 2**30:.2f} GiB, "
              f"float16 {os.path.getsize(paths['float16']) / 2**30:.2f} GiB) in {time.perf_counter() - start:.0f} s")
        results = {method: [] for method in METHODS}
        for _ in range(args.rounds):  # interleaved: every method once per round
            for method in METHODS:
                run = subprocess.run(
                    [sys.executable, __file__, "--child", method, "--dir", directory, "--queries", str(args.queries),
                     "--k", str(args.k), "--repeats", str(args.repeats)],
                    capture_output=True, text=True,
                )
                if run.returncode:
                    raise RuntimeError(f"{method} failed:\n{run.stderr[-3000:]}")
                results[method].append(json.loads(run.stdout.splitlines()[-1]))
        indices = {m: np.load(os.path.join(directory, f"indices_{i}.npy")) for i, m in enumerate(METHODS)}
        report(args, results, indices, queries, paths)
    finally:
        for name in os.listdir(directory):
            os.remove(os.path.join(directory, name))
        os.rmdir(directory)


def report(args, results, indices, queries, paths):
    print(f"\n### {args.queries} queries x {args.n} x {args.dim} clustered, k={args.k}, cosine "
          f"({args.rounds} interleaved rounds, one process per method and round)\n")
    print("| method | setup (s) | first search (s) | search, best (s) | vs faiss | peak RSS (MiB) | "
          "growth over imports (MiB) | neighbours |")
    print("|---|---|---|---|---|---|---|---|")
    faiss_best = min(r["best"] for r in results["faiss IndexFlatIP"])
    reference = indices["in-memory float32"]
    gallery = np.load(paths["float32"], mmap_mode="r")
    for method, runs in results.items():
        best = min(r["best"] for r in runs)
        row = [min(r["setup"] for r in runs), min(r["first"] for r in runs), best]
        peak, growth = max(r["peak"] for r in runs), max(r["growth"] for r in runs)
        print(f"| {method} | {row[0]:.1f} | {row[1]:.2f} | {row[2]:.2f} | {best / faiss_best:.2f}x | "
              f"{peak:.0f} | {growth:.0f} | {_agreement(indices[method], reference, queries, gallery)} |")


def _agreement(indices, reference, queries, gallery):
    """Against the in-memory float32 search: identical, or the top-k overlap and the score gap."""
    if np.array_equal(indices, reference):
        return "identical to in-memory float32"
    overlap = np.mean([len(np.intersect1d(a, b)) / len(a) for a, b in zip(indices, reference)])
    rows = np.flatnonzero((indices != reference).any(axis=1))
    score = lambda ind: np.sort(_scores(queries[rows], gallery, ind[rows]), axis=1)  # noqa: E731
    gap = np.abs(score(indices) - score(reference)).max()
    return f"top-{indices.shape[1]} overlap {overlap:.4f}, {len(rows)} rows differ, max float32 score gap {gap:.1e}"


def _scores(queries, gallery, indices):
    """float64 cosine of each query with its listed gallery rows (rows read one by one)."""
    rows = np.stack([np.asarray(gallery[i], np.float64) for i in indices.ravel()]).reshape(*indices.shape, -1)
    return np.einsum("qd,qkd->qk", queries.astype(np.float64), rows)


def loss(args):
    """What float16 storage costs on real features: Recall@1 and top-10 overlap."""
    from sklearn.datasets import load_digits

    from skretrieval import ImageRetriever

    features, labels = digits_features(args.features_cache), load_digits().target
    print("\n### float16 storage against float32 on real features (the default encoder's, digits)\n")
    print("| measure | float32 storage | float16 storage |")
    print("|---|---|---|")
    recall = {}
    for dtype in ("float32", "float16"):
        retriever = ImageRetriever("precomputed", topk=1, gallery_dtype=dtype).fit(features, labels)
        best = retriever.kneighbors(n_neighbors=1, return_distance=False)[:, 0]  # leave-one-out
        recall[dtype] = np.mean(labels[best] == labels)
    print(f"| leave-one-out Recall@1, 1,797 digits x 1280 | {recall['float32']:.4f} | {recall['float16']:.4f} |")
    queries, gallery = make_data(1000, 200_000, 0, kind="digits", features_cache=args.features_cache)
    found = {
        dtype: ImageRetriever("precomputed", topk=10, gallery_dtype=dtype).fit(gallery).kneighbors(queries)[1]
        for dtype in ("float32", "float16")
    }
    overlap = np.mean([len(np.intersect1d(a, b)) / 10 for a, b in zip(found["float32"], found["float16"])])
    top1 = np.mean(found["float32"][:, 0] == found["float16"][:, 0])
    print(f"| top-10 overlap with float32, 1,000 queries x 200,000 x 1280 (digits + noise) | 1 | {overlap:.4f} |")
    print(f"| same best match as float32, same data | 1 | {top1:.4f} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5_000_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="timed searches per process after the first")
    parser.add_argument("--dir", default=None, help="where the temporary gallery files go")
    parser.add_argument("--loss", action="store_true", help="float16's loss on real features instead")
    parser.add_argument("--features-cache", default=None, help="bench_search.py's digits features")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        paths = {dtype: os.path.join(args.dir, f"gallery_{dtype}.npy") for dtype in ("float32", "float16")}
        out_path = os.path.join(args.dir, f"indices_{METHODS.index(args.child)}.npy")
        return child(args.child, paths, os.path.join(args.dir, "queries.npy"), args.k, args.repeats, out_path)
    print(describe())
    print("GPU: not measured here. The machine is shared with other jobs (noisy): read the ratios to "
          f"faiss, measured in the same rounds. Load average at start: {os.getloadavg()[0]:.1f}.")
    if args.loss:
        if args.features_cache is None:
            from bench_search import DEFAULT_CACHE

            args.features_cache = DEFAULT_CACHE
        return loss(args)
    bench(args)


if __name__ == "__main__":
    main()
