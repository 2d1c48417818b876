"""Serve a gallery larger than any one worker's memory limit, sharded on a 2-worker LocalCluster.

Compares, in the same run, the single-machine ``ImageRetriever.kneighbors`` (the whole
gallery in this process) with ``ShardedRetriever.kneighbors`` (half the gallery on each
worker), checks the answers are identical, and times the tree merge of the shards' local
top-k lists on their own: the merge's share of the sharded query time.

    python benchmarks/bench_dask.py [--n-gallery 1700000] [--dim 512] [--memory-limit 3200MiB] [--n-shards 16]

A worker that has imported torch already holds ~0.8 GiB, so the limit must exceed that plus
half the gallery plus the search's working copy of one shard (hence 16 small shards).
Spilling and pausing are off so the shards stay in memory (the nanny still kills a worker
above 95% of its limit).
"""

import argparse
import time

import numpy as np
from _machine import describe


def _rss_mib():
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _median_time(fn, repeat):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), out


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n-gallery", type=int, default=1_700_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--n-queries", type=int, default=128)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--memory-limit", default="3200MiB")
    parser.add_argument("--n-shards", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    import dask
    from dask.utils import parse_bytes
    from distributed import Client, LocalCluster

    from skretrieval import ImageEncoder, ImageRetriever
    from skretrieval.dask import ShardedRetriever
    from skretrieval.dask._sharded import _merge, _shard_topk

    rng = np.random.default_rng(0)
    gallery = rng.standard_normal((args.n_gallery, args.dim), dtype=np.float32)
    queries = rng.standard_normal((args.n_queries, args.dim), dtype=np.float32)
    labels = rng.integers(0, 100, size=args.n_gallery)
    gallery_mib = gallery.nbytes / 2**20
    limit_mib = parse_bytes(args.memory_limit) / 2**20
    assert limit_mib < gallery_mib, "the point is a gallery larger than one worker's memory limit"
    print(describe())
    print(f"gallery {args.n_gallery} x {args.dim} float32 = {gallery_mib:.0f} MiB; "
          f"worker memory limit {limit_mib:.0f} MiB; {args.n_queries} queries, k={args.k}")

    single = ImageRetriever(
        ImageEncoder("precomputed", device="cpu"),
        topk=args.k, working_memory=64,
    )
    single.fit(gallery, labels)
    t_single, expected = _median_time(lambda: single.kneighbors(queries), args.repeat)

    memory = {f"distributed.worker.memory.{key}": False for key in ("target", "spill", "pause")}
    with dask.config.set(memory), LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, memory_limit=args.memory_limit,
        host="127.0.0.1", dashboard_address=None,
    ) as cluster, Client(cluster) as client:
        t0 = time.perf_counter()
        sharded = ShardedRetriever.from_retriever(single, client, n_shards=args.n_shards)
        t_shard = time.perf_counter() - t0
        t_sharded, got = _median_time(lambda: sharded.kneighbors(queries), args.repeat)
        for a, b in zip(expected, got):
            np.testing.assert_array_equal(a, b)

        block = client.scatter(queries, hash=False)
        futures = [  # the shards' local top-k lists, as the query computes them
            client.submit(_shard_topk, block, s, int(o), args.k, "cosine", 64, pure=False)
            for s, o in zip(sharded.shards_, sharded.shard_offsets_[:-1])
        ]
        parts = client.gather(futures)

        def merge_all():  # the same pairwise tree, on this process
            level = parts
            while len(level) > 1:
                level = [_merge(a, b, args.k) for a, b in zip(level[::2], level[1::2])] + level[len(level) - len(level) % 2:]
            return level[0]

        t_merge_cpu, _ = _median_time(merge_all, args.repeat)
        worker_rss = client.run(_rss_mib)

    rows = [
        ("single machine `ImageRetriever.kneighbors` (whole gallery, 2 torch threads)", t_single),
        (f"`ShardedRetriever.kneighbors` (2 workers x 1 thread, half the gallery each, {args.n_shards} shards)", t_sharded),
        (f"  the tree merge's compute alone ({args.n_shards} lists of k, numpy)", t_merge_cpu),
    ]
    print(f"\nsharding the gallery (scatter to workers): {t_shard:.2f} s; identical answers: yes")
    print("| step | median time (s) | vs single machine |\n| --- | --- | --- |")
    for name, t in rows:
        print(f"| {name} | {t:.3f} | {t / t_single:.2f}x |")
    print(f"merge compute share of the sharded query: {t_merge_cpu / t_sharded:.3%}")
    print("worker RSS after the run (MiB):", {w.rsplit(":", 1)[-1]: round(v) for w, v in worker_rss.items()})


if __name__ == "__main__":
    main()
