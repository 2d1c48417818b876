"""All-vs-all duplicate groups of a large gallery: ``find_duplicates`` beside faiss ``range_search``.

The data is ``bench_search``'s clustered kind (4,000 standard-normal centres, each vector a
random centre plus 0.35 x standard-normal noise, normalised; top cosines within a cluster
stay below ~0.96) with planted duplicates: ``--planted`` originals, each copied 1 to 3 times
as the original plus ``0.05 / sqrt(d)`` x standard-normal noise (cosine to the original
~0.999), the copies written over random other rows. A planted group is an original and its
copies.

Each method runs in its own process on the same seeded data and reports its time and peak
resident memory (``VmHWM``), also as the increase over the process once the data and the
index are held:

- ours: ``ImageRetriever("precomputed").fit(X).find_duplicates(min_similarity=t)`` (radius search of the
  gallery against itself, ``radius_neighbors_graph`` CSR, ``connected_components``); the
  search gallery's normalised copy is built inside the timed call;
- faiss: ``IndexFlatIP`` (``add`` untimed), ``range_search`` of every row in equal blocks of
  at most ``--faiss-batch`` rows (200,000), then the same CSR and ``connected_components``
  (timed). One ``range_search(X, t)`` of a million rows (``--faiss-batch 0``) needs more than
  21 GiB (faiss's memory grows with queries x gallery); blocks bound it. Keep blocks at
  least ``faiss.cvar.distance_compute_blas_threshold`` (128,000 in faiss 1.15): below it
  faiss scans the gallery once per query without BLAS, fast only while the gallery fits in
  the CPU's cache.

Found / planted: planted groups found exactly (every member, nothing else), and planted
copies in their original's group; the groups of the two methods are compared with each other
(faiss keeps ``s > t``, we keep ``s >= t``: they differ only by exact ties at ``t``).

    python benchmarks/bench_duplicates.py                    # 1,000,000 x 128 (~1.5 h here)
    python benchmarks/bench_duplicates.py --n 100000         # a quick look
    python benchmarks/bench_duplicates.py --methods faiss --faiss-rows 200000

The last runs faiss on the first 200,000 rows only and extrapolates its time to all rows
(every row costs the same), where the whole faiss run does not fit the time at hand.
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
from bench_search import N_CENTRES, NOISE, _around, _rss
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components

METHODS = ("ours", "faiss")
COPY_NOISE = 0.05


def planted_data(n, dim, n_planted, seed=0):
    """``(X, planted, originals)``: clustered rows with planted duplicates; ``planted[i]`` is row
    i's planted group (-1 for rows in none), ``originals[g]`` the row group ``g`` was copied from."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((N_CENTRES, dim), dtype=np.float32)
    X = _around(rng, centres, NOISE, n)
    copies = rng.integers(1, 4, n_planted)
    rows = rng.permutation(n)[: n_planted + copies.sum()]
    originals, targets = rows[:n_planted], rows[n_planted:]
    group_of_target = np.repeat(np.arange(n_planted), copies)
    noise = COPY_NOISE / np.sqrt(dim) * rng.standard_normal((len(targets), dim), dtype=np.float32)
    block = X[originals[group_of_target]] + noise
    X[targets] = block / np.linalg.norm(block, axis=1, keepdims=True)
    planted = np.full(n, -1, np.int64)
    planted[originals], planted[targets] = np.arange(n_planted), group_of_target
    return X, planted, originals


def _components(indptr, indices, n) -> np.ndarray:
    graph = csr_matrix((np.ones(len(indices), np.int8), indices, indptr), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def _faiss_range_search(index, X, threshold, batch):
    """``(matches per row, matched rows)`` of ``index.range_search`` over equal blocks of at
    most ``batch`` rows (equal, so that no small last block falls below faiss's BLAS threshold)."""
    counts, found = [], []
    bounds = np.linspace(0, len(X), -(-len(X) // batch) + 1).astype(np.int64)
    for start, stop in zip(bounds[:-1], bounds[1:]):
        lims, _, rows = index.range_search(X[start:stop], threshold)
        counts.append(np.diff(lims.astype(np.int64)))
        found.append(rows)
    return np.concatenate(counts), np.concatenate(found)


def child(method, n, dim, n_planted, threshold, out, faiss_batch=0, faiss_rows=0):
    """One method in this process: writes its component labels to ``out``, prints its figures."""
    X = planted_data(n, dim, n_planted)[0]
    if method == "ours":
        from skretrieval import ImageRetriever

        retriever = ImageRetriever("precomputed").fit(X)
        baseline = _rss("VmHWM")
        start = time.perf_counter()
        groups = retriever.find_duplicates(min_similarity=threshold)
        seconds = time.perf_counter() - start
        labels = np.arange(n)  # a group is labelled by its first row; single rows by their own
        for group in groups:
            labels[group] = group[0]
    else:
        import faiss

        index = faiss.IndexFlatIP(dim)
        index.add(X)
        baseline = _rss("VmHWM")
        searched = faiss_rows or n
        start = time.perf_counter()
        counts, found = _faiss_range_search(index, X[:searched], threshold, faiss_batch or searched)
        if searched < n:  # the first rows only: every row costs the same, so the time of all
            seconds = (time.perf_counter() - start) * n / searched  # is extrapolated; no groups
            peak = _rss("VmHWM")
            print(json.dumps({"seconds": seconds, "peak_mib": peak / 2**20, "increase_mib": (peak - baseline) / 2**20,
                              "searched": searched}))
            return
        rows = np.repeat(np.arange(n), counts)
        keep = found != rows  # each row finds itself
        indptr = np.concatenate([[0], np.cumsum(np.bincount(rows[keep], minlength=n))])
        component = _components(indptr, found[keep], n)
        seconds = time.perf_counter() - start
        first = np.full(component.max() + 1, n)
        np.minimum.at(first, component, np.arange(n))
        labels = first[component]
    np.save(out, labels)
    peak = _rss("VmHWM")
    print(json.dumps({"seconds": seconds, "peak_mib": peak / 2**20, "increase_mib": (peak - baseline) / 2**20}))


def recovered(labels, planted, originals) -> tuple[int, int, int]:
    """Planted groups found exactly, planted copies in their original's group, groups found."""
    sizes = np.bincount(labels, minlength=len(labels))
    member = planted >= 0
    group, label = planted[member], labels[member]
    lowest = np.full(len(originals), np.iinfo(np.int64).max)
    highest = np.full(len(originals), -1)
    np.minimum.at(lowest, group, label)
    np.maximum.at(highest, group, label)
    planted_sizes = np.bincount(group, minlength=len(originals))
    exact = int(np.count_nonzero((lowest == highest) & (sizes[lowest] == planted_sizes)))
    copies = member.copy()
    copies[originals] = False
    found = int(np.count_nonzero(labels[copies] == labels[originals[planted[copies]]]))
    return exact, found, int(np.count_nonzero(sizes > 1))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="gallery rows (default: %(default)s)")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--planted", type=int, default=10_000, help="planted groups (default: %(default)s)")
    parser.add_argument("--threshold", type=float, default=0.98, help="cosine similarity (default: %(default)s)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument(
        "--faiss-batch", type=int, default=200_000,
        help="at most this many query rows per faiss range_search call; 0: one call for all "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--faiss-rows", type=int, default=0,
        help="range_search only the first rows as queries, and extrapolate faiss's time to all "
        "(for a machine where the whole run does not fit in memory or time; default: all)",
    )
    parser.add_argument("--child", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(
            args.child, args.n, args.dim, args.planted, args.threshold, args.out, args.faiss_batch, args.faiss_rows
        )
    print(describe())
    print("The machine is shared with other jobs: read the ratio to faiss, measured in the same run.")
    planted, originals = planted_data(args.n, args.dim, args.planted)[1:]  # X is not kept
    n_copies = int(np.count_nonzero(planted >= 0)) - args.planted
    print(f"\n### {args.n} x {args.dim} clustered, {args.planted} planted groups ({n_copies} copies), "
          f"cosine >= {args.threshold}; faiss range_search in blocks of {args.faiss_batch or args.n} rows\n")
    nxn = args.n**2 * 4 / 2**20
    print(f"An n x n float32 matrix would take {nxn:,.0f} MiB; the gallery takes {args.n * args.dim * 4 / 2**20:.0f} MiB.\n")
    print("| method | time (s) | vs faiss | peak RSS (MiB) | increase (MiB) | planted groups found exactly "
          "| copies found | groups | load before |")
    print("|---|---|---|---|---|---|---|---|---|")
    results, labels = {}, {}
    with tempfile.TemporaryDirectory() as folder:
        for method in args.methods:
            out = os.path.join(folder, f"{method}.npy")
            load = os.getloadavg()[0]
            run = subprocess.run(
                [sys.executable, __file__, "--child", method, "--n", str(args.n), "--dim", str(args.dim),
                 "--planted", str(args.planted), "--threshold", str(args.threshold), "--out", out,
                 "--faiss-batch", str(args.faiss_batch), "--faiss-rows", str(args.faiss_rows)],
                capture_output=True, text=True,
            )
            if run.returncode:  # e.g. killed for memory: the other method's figures still count
                print(f"{method} did not finish (exit code {run.returncode}): {run.stderr.strip()[-300:]}")
                continue
            results[method] = {**json.loads(run.stdout.splitlines()[-1]), "load": load}
            if os.path.exists(out):
                labels[method] = np.load(out)
    for method, r in results.items():
        found = "| - | - | -"
        if method in labels:
            exact, copies, n_groups = recovered(labels[method], planted, originals)
            found = f"| {exact} / {args.planted} | {copies} / {n_copies} | {n_groups}"
        ratio = f"{r['seconds'] / results['faiss']['seconds']:.2f}x" if "faiss" in results else "-"
        time_of = f"{r['seconds']:.1f}" + (f" (extrapolated from {r['searched']:,} rows)" if "searched" in r else "")
        print(f"| {method} | {time_of} | {ratio} | {r['peak_mib']:.0f} | {r['increase_mib']:.0f} "
              f"{found} | {r['load']:.1f} |")
    if len(labels) == 2:
        same = np.array_equal(labels["ours"], labels["faiss"])
        print(f"\nGroups of ours and faiss identical: {'yes' if same else 'NO'}.")
    print(f"Load average at the end: {os.getloadavg()[0]:.1f}.")


if __name__ == "__main__":
    main()
