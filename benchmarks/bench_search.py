"""Exact top-k search: skretrieval's engine against faiss, scikit-learn and the seed's approach.

Times ``topk_search`` (fp32 and bf16 products, gallery resident as a ``SearchGallery``, as
``ImageRetriever`` keeps it) against ``faiss.IndexFlatIP``, ``NearestNeighbors(algorithm=
"brute")`` and the seed's broadcast ``torch.cosine_similarity`` + full sort (where those fit),
on L2-normalised random vectors (cosine = inner product). Runs are interleaved (one of each
method per round) and the median of the rounds is reported, as ratios to faiss in the same
run; neighbours are checked against faiss (fp32) and fp32 (bf16: must be identical).

A memory check runs in a separate process: peak RSS increase over the process after imports
and data creation, for a search of the largest size.

    python benchmarks/bench_search.py                 # 1000x200000x512 and 10000x1000000x128
    python benchmarks/bench_search.py --quick
    python benchmarks/bench_search.py --sizes 1000x200000x512 --repeats 7
    python benchmarks/bench_search.py --device cuda
"""

from __future__ import annotations

import argparse
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


def make_data(n_queries, n_gallery, dim, seed=0):
    rng = np.random.default_rng(seed)
    gallery = np.empty((n_gallery, dim), dtype=np.float32)
    for start in range(0, n_gallery, 100_000):  # float32 chunks: no float64 copy of the gallery
        block = rng.standard_normal((min(100_000, n_gallery - start), dim), dtype=np.float32)
        gallery[start : start + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    queries = rng.standard_normal((n_queries, dim), dtype=np.float32)
    return queries / np.linalg.norm(queries, axis=1, keepdims=True), gallery


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


def bench_size(size, k, repeats, device):
    n_queries, n_gallery, dim = map(int, size.split("x"))
    queries, gallery = make_data(n_queries, n_gallery, dim)
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
    medians = {name: statistics.median(t) for name, t in times.items()}
    reference = results["faiss IndexFlatIP"]
    print(f"\n### {n_queries} x {n_gallery} x {dim}, k={k} (median of {repeats} interleaved runs)\n")
    print("| method | median (s) | vs faiss | neighbours |")
    print("|---|---|---|---|")
    flops = 2.0 * n_queries * n_gallery * dim
    for name, median in medians.items():
        neighbours = _compare(results[name], reference, queries, gallery)
        if name == "ours bf16" and "ours fp32" in results:
            same = np.array_equal(results[name], results["ours fp32"])
            neighbours += f"; identical to ours fp32: {'yes' if same else 'NO'}"
        rate = f", {flops / median / 1e12:.2f} TFLOP/s" if device != "cpu" else ""
        print(f"| {name} | {median:.3f} | {median / medians['faiss IndexFlatIP']:.2f}x | {neighbours}{rate} |")
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
    topk_search(queries, gallery, k, get_similarity("cosine"), dtype=dtype)
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
    for size in [] if args.memory_only else sizes:
        bench_size(size, args.k, args.repeats, args.device)
    if not args.no_memory:
        largest = max(sizes, key=lambda s: np.prod(list(map(int, s.split("x")))))
        memory_check(args.memory_size or largest, args.k)


if __name__ == "__main__":
    main()
