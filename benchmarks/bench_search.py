"""Exact top-k search: skretrieval's engine against faiss, scikit-learn and the seed's approach.

Times ``topk_search`` (fp32 and bf16 products, gallery resident as a ``SearchGallery``, as
``ImageRetriever`` keeps it; fp32 also with the tail bound declined, the full scan alone)
against ``faiss.IndexFlatIP``, ``NearestNeighbors(algorithm=
"brute")`` and the seed's broadcast ``torch.cosine_similarity`` + full sort (where those fit),
on L2-normalised vectors (cosine = inner product) of three kinds (``--data``):

- ``uniform``: random directions (standard normal, normalised);
- ``clustered``: 4,000 standard-normal centres, each vector a random centre plus 0.35 x
  standard-normal noise, normalised (as real embeddings, with many near-ties; issue 14's data);
- ``digits``: real features, the default encoder's (``ImageEncoder()``, efficientnet_lite0,
  1280-d) of all 1,797 scikit-learn digits (``load_digits().images / 16``), cached on disk
  (``--features-cache``); the gallery and the queries are those features, each row a random
  digit's plus 0.35 / sqrt(1280) x standard-normal noise (the clustered data's relative
  noise), normalised. NQxNGxD sizes use their D only for uniform and clustered.

Runs are interleaved (one of each method per round) and the best and the median of the rounds
are reported, as ratios to faiss in the same run, with the first round (where the fp32 search
probes the tail bound and, on data it does not prune, declines it); the bound's one-time build
is timed apart, as faiss's ``index.add`` is not timed; neighbours are checked against faiss (fp32)
and fp32 (bf16: must be identical).

A memory check runs in a separate process: peak RSS increase over the process after imports
and data creation, for a search of the largest size.

    python benchmarks/bench_search.py                 # 1000x200000x512 and 10000x1000000x128
    python benchmarks/bench_search.py --data clustered --sizes 1000x200000x512 --repeats 3
    python benchmarks/bench_search.py --quick
    python benchmarks/bench_search.py --sizes 1000x200000x512 --repeats 7
    python benchmarks/bench_search.py --device cuda
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

import numpy as np
import torch
from _machine import cpu_flags, describe

from skretrieval.search import SearchGallery, cpu_has_bf16_matmul, get_similarity, topk_search

DEFAULT_SIZES = ["1000x200000x512", "10000x1000000x128"]
QUICK_SIZES = ["200x20000x128", "1000x50000x256"]
SEED_LIMIT_BYTES = 2 * 2**30  # the seed's (n_queries, n_gallery, d) broadcast must fit
SKLEARN_LIMIT_PAIRS = 2 * 10**8  # scikit-learn brute force beyond this takes minutes per run


DATA = ("uniform", "clustered", "digits")
N_CENTRES, NOISE = 4000, 0.35
DEFAULT_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "skretrieval-bench", "digits_features.npy")


def make_data(n_queries, n_gallery, dim, seed=0, kind="uniform", features_cache=DEFAULT_CACHE):
    """``(queries, gallery)``, L2-normalised float32, of one of the kinds in the docstring."""
    rng = np.random.default_rng(seed)
    if kind == "uniform":
        centres, noise = np.zeros((1, dim), np.float32), 1.0
    elif kind == "clustered":
        centres, noise = rng.standard_normal((N_CENTRES, dim), dtype=np.float32), NOISE
    else:
        centres = digits_features(features_cache)
        noise = NOISE / np.sqrt(centres.shape[1])
    return _around(rng, centres, noise, n_queries), _around(rng, centres, noise, n_gallery)


def _around(rng, centres, noise, n, chunk=100_000):
    """n random centres plus noise, normalised, in float32 chunks (no float64 gallery copy)."""
    out = np.empty((n, centres.shape[1]), dtype=np.float32)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        block = centres[rng.integers(0, len(centres), m)]
        block += noise * rng.standard_normal(block.shape, dtype=np.float32)
        out[start : start + m] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def digits_features(path=DEFAULT_CACHE):
    """The default encoder's features of the 1,797 digits, normalised; computed once, cached."""
    if os.path.exists(path):
        return np.load(path)
    from sklearn.datasets import load_digits

    from skretrieval import ImageEncoder

    images = load_digits().images / 16.0
    features = ImageEncoder().fit(images[:2]).transform(images).astype(np.float32)
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    np.save(path, features)
    return features


def methods(queries, gallery, k, device):
    """name -> callable returning (n_queries, k) indices; setup (index build) done here."""
    import faiss

    similarity = get_similarity("cosine")
    out = {}
    index = faiss.IndexFlatIP(gallery.shape[1])
    index.add(gallery)
    out["faiss IndexFlatIP"] = lambda: index.search(queries, k)[1]
    for name, dtype in (("ours fp32", torch.float32), ("ours bf16", torch.bfloat16)):
        if dtype == torch.bfloat16 and device == "cpu" and not cpu_has_bf16_matmul():
            continue
        resident = SearchGallery(gallery, similarity, dtype, device)
        out[name] = lambda resident=resident: topk_search(queries, resident, k, similarity)[1]
        if dtype == torch.float32:
            start = time.perf_counter()
            built = resident.tail_bound is not None
            print(f"\nTail bound of the fp32 gallery: {f'built in {time.perf_counter() - start:.2f} s' if built else 'none'}.")
            full = SearchGallery(gallery, similarity, dtype, device)
            full.decline_tail_bound()
            out["ours fp32, full scan"] = lambda full=full: topk_search(queries, full, k, similarity)[1]
    if len(queries) * len(gallery) <= SKLEARN_LIMIT_PAIRS:
        from sklearn.neighbors import NearestNeighbors

        nn = NearestNeighbors(n_neighbors=k, algorithm="brute", metric="cosine").fit(gallery)
        out["sklearn brute"] = lambda: nn.kneighbors(queries, return_distance=False)
    if queries.nbytes * len(gallery) <= SEED_LIMIT_BYTES:
        q, g = torch.from_numpy(queries).to(device), torch.from_numpy(gallery).to(device)

        def seed():
            scores = torch.cosine_similarity(q.unsqueeze(1), g.unsqueeze(0), dim=2)
            return torch.sort(scores, dim=1, descending=True).indices[:, :k].cpu().numpy()

        out["seed broadcast+sort"] = seed
    return out


def _sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def matmul_peak(device, dtype, n=4096):
    """Measured GEMM FLOP/s of this device in ``dtype`` (best of 5)."""
    a = torch.randn(n, n, device=device).to(dtype)
    best = np.inf
    for _ in range(5):
        _sync(device)
        start = time.perf_counter()
        a @ a
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def bench_size(size, k, repeats, device, kind="uniform", features_cache=DEFAULT_CACHE):
    n_queries, n_gallery, dim = map(int, size.split("x"))
    queries, gallery = make_data(n_queries, n_gallery, dim, kind=kind, features_cache=features_cache)
    n_gallery, dim = gallery.shape
    runs = methods(queries, gallery, k, device)
    times = {name: [] for name in runs}
    results = {}
    for _ in range(repeats):  # interleaved: every method once per round
        for name, run in runs.items():
            _sync(device)
            start = time.perf_counter()
            results[name] = run()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    best = {name: min(t) for name, t in times.items()}
    medians = {name: statistics.median(t) for name, t in times.items()}
    reference = results["faiss IndexFlatIP"]
    print(f"\n### {kind}: {n_queries} x {n_gallery} x {dim}, k={k} ({repeats} interleaved rounds)\n")
    print("| method | best (s) | vs faiss, best | median (s) | vs faiss, median | first round (s) | neighbours |")
    print("|---|---|---|---|---|---|---|")
    flops = 2.0 * n_queries * n_gallery * dim
    faiss_best, faiss_median = best["faiss IndexFlatIP"], medians["faiss IndexFlatIP"]
    for name in runs:
        neighbours = _compare(results[name], reference, queries, gallery)
        if name == "ours bf16" and "ours fp32" in results:
            same = np.array_equal(results[name], results["ours fp32"])
            neighbours += f"; identical to ours fp32: {'yes' if same else 'NO'}"
        rate = f", {flops / best[name] / 1e12:.2f} TFLOP/s" if device != "cpu" else ""
        print(f"| {name} | {best[name]:.3f} | {best[name] / faiss_best:.2f}x | {medians[name]:.3f} | "
              f"{medians[name] / faiss_median:.2f}x | {times[name][0]:.3f} | {neighbours}{rate} |")
    print(f"\nfaiss: {flops / faiss_best / 1e9:.0f} GFLOP/s at its best round.")
    skipped = [m for m in ("sklearn brute", "seed broadcast+sort") if m not in runs]
    if skipped:
        print(f"\nNot run at this size (would not fit or take minutes per run): {', '.join(skipped)}.")


def _compare(indices, reference, queries, gallery):
    """Identical to faiss, or differing only where the scores tie within float32 rounding."""
    differ = np.flatnonzero((indices != reference).any(axis=1))
    if not len(differ):
        return "identical"
    q = queries[differ].astype(np.float64)
    ours = np.sort(np.einsum("qd,qkd->qk", q, gallery[indices[differ]].astype(np.float64)), axis=1)
    theirs = np.sort(np.einsum("qd,qkd->qk", q, gallery[reference[differ]].astype(np.float64)), axis=1)
    gap = np.abs(ours - theirs).max()
    verdict = "identical up to ties" if gap < 1e-5 else "DIFFERENT"
    return f"{verdict} ({len(differ)} rows differ, max score gap {gap:.1e})"


def memory_child(size, precision, k):
    """Run in its own process: peak RSS increase of one search over imports + data."""
    n_queries, n_gallery, dim = map(int, size.split("x"))
    queries, gallery = make_data(n_queries, n_gallery, dim)
    baseline = _rss("VmRSS")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    similarity = get_similarity("cosine")
    # Resident, as ImageRetriever keeps it: the fp32 one with its tail bound.
    topk_search(queries, SearchGallery(gallery, similarity, dtype), k, similarity)
    increase = _rss("VmHWM") - baseline
    print(f"{increase / 2**20:.0f} {gallery.nbytes / 2**20:.0f}")


def _rss(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_check(size, k):
    print(f"\n### Memory, {size.replace('x', ' x ')}, k={k} (separate process each)\n")
    print("| precision | peak RSS increase (MiB) | gallery (MiB) | bound: gallery + 1 GiB | holds |")
    print("|---|---|---|---|---|")
    for precision in ("fp32", "bf16"):
        out = subprocess.run(
            [sys.executable, __file__, "--memory-child", size, "--precision", precision, "--k", str(k)],
            capture_output=True, text=True, check=True,
        ).stdout.split()
        increase, gallery = float(out[-2]), float(out[-1])
        bound = gallery + 1024
        print(f"| {precision} | {increase:.0f} | {gallery:.0f} | {bound:.0f} | {'yes' if increase < bound else 'NO'} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", help="NQxNGxD, e.g. 1000x200000x512")
    parser.add_argument("--quick", action="store_true", help=f"small sizes {QUICK_SIZES}")
    parser.add_argument("--data", nargs="+", choices=DATA, default=list(DATA), help="kinds of vectors")
    parser.add_argument("--features-cache", default=DEFAULT_CACHE, help="the digits features (.npy)")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory check")
    parser.add_argument("--memory-size", help="size of the memory check (default: the largest)")
    parser.add_argument("--memory-only", action="store_true", help="only the memory check")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        return memory_child(args.memory_child, args.precision, args.k)
    sizes = args.sizes or (QUICK_SIZES if args.quick else DEFAULT_SIZES)
    print(describe())
    print(f"bf16 matrix units: {'yes' if cpu_has_bf16_matmul() else 'no'} "
          f"({' '.join(sorted(cpu_flags() & {'amx_bf16', 'avx512_bf16'})) or 'none'})")
    if args.device == "cpu":
        print("GPU: not measured here" + ("" if torch.cuda.is_available() else " (no GPU)"))
    else:
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            print(f"{args.device} matmul peak {dtype}: {matmul_peak(args.device, dtype) / 1e12:.1f} TFLOP/s")
    print("The machine may be shared with other jobs: read the ratios to faiss, measured in the same "
          f"rounds, not the times. Load average at start: {os.getloadavg()[0]:.1f}.")
    for size in [] if args.memory_only else sizes:
        for kind in args.data:
            bench_size(size, args.k, args.repeats, args.device, kind, args.features_cache)
    if not args.no_memory:
        largest = max(sizes, key=lambda s: np.prod(list(map(int, s.split("x")))))
        memory_check(args.memory_size or largest, args.k)


if __name__ == "__main__":
    main()
