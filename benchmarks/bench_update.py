"""``skretrieval index --update`` against indexing the folder anew; ``remove`` against a re-fit.

    python benchmarks/bench_update.py [--n 1000] [--rounds 3] [--gallery 1000000]

Folder: ``--n`` JPEG photos of 480x360 (bench_encode.py's: crops of 14 real photos), indexed
once with the default encoder (EfficientNet-Lite0, CPU) into ``base.skr``. Then 1 % of the
files change: half of them rewritten (another crop, same name), a quarter deleted, the rest
new (at 1,000: 5, 2 and 3). Each
round, interleaved, each command in a new process as a user runs it (imports, model load
and save included; the exported encoder is in a warm artefact cache for all):

* ``index`` (the peer): ``skretrieval index FOLDER -o fresh.skr``, every file encoded;
* ``update``: ``skretrieval index --update copy_of_base.skr FOLDER``: only the 1 % encoded;
* ``update, nothing changed``: the same again on its result: stats checked, nothing encoded.

The updated model is checked against the fresh index (same paths in the same order, the
largest feature difference printed). ``remove``: 1,000 random rows of a ``--gallery`` x 128
float32 gallery, by row and by id, against ``fit`` of the kept features (the peer).
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _machine import describe  # noqa: E402
from bench_encode import write_jpegs  # noqa: E402


def cli(*argv, env) -> tuple[float, str]:
    """Seconds the command took, and its line about what it encoded (update: the plan)."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "skretrieval", *map(str, argv)], check=True, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - start
    lines = [line for line in done.stderr.replace("\r", "\n").splitlines() if line.startswith(("update:", "encoded"))]
    return seconds, lines[0] if lines else ""


def backdate(files, seconds: float) -> None:
    """Modification times in the past: as a folder written long before it is indexed."""
    when = time.time() - seconds
    for f in files:
        os.utime(f, (when, when))


def change_one_percent(folder: Path, n: int) -> int:
    """Rewrite half of 1 % of the files, delete a quarter, add the rest; returns how many to encode."""
    files = sorted(folder.rglob("*.jpg"))
    rng = np.random.default_rng(1)
    picked = rng.choice(len(files), size=max(3, n // 100), replace=False)
    rewrite, delete = picked[: len(picked) // 2], picked[len(picked) // 2 : 3 * len(picked) // 4]
    n_new = len(picked) - len(rewrite) - len(delete)
    scratch = folder.parent / "scratch"
    write_jpegs(scratch, n + len(rewrite) + n_new)  # the same photos, other crops beyond n
    extra = sorted(scratch.rglob("*.jpg"))[n:]
    for i, source in zip(rewrite, extra):
        shutil.copyfile(source, files[i])
    for i in delete:
        os.remove(files[i])
    for j, source in enumerate(extra[len(rewrite) :]):
        shutil.copyfile(source, folder / "class0" / f"new{j:04d}.jpg")
    shutil.rmtree(scratch)
    backdate([files[i] for i in rewrite] + sorted(folder.rglob("new*.jpg")), 1800)
    return len(rewrite) + n_new


def bench_remove(n: int, rounds: int) -> None:
    from skretrieval import ImageRetriever

    X = np.random.default_rng(0).standard_normal((n, 128)).astype(np.float32)
    rows = np.random.default_rng(1).choice(n, 1000, replace=False)
    keep = np.setdiff1d(np.arange(n), rows)
    times = {"fit on the kept rows (peer)": [], "remove(rows=)": [], "remove(ids)": []}
    for _ in range(rounds):
        start = time.perf_counter()
        expected = ImageRetriever("precomputed").fit(X[keep])
        times["fit on the kept rows (peer)"].append(time.perf_counter() - start)
        for name, kwargs in (("remove(rows=)", {"rows": rows}), ("remove(ids)", {"ids": rows})):
            retriever = ImageRetriever("precomputed").fit(X)
            start = time.perf_counter()
            retriever.remove(**kwargs)
            times[name].append(time.perf_counter() - start)
            assert np.array_equal(retriever.prototype_, expected.prototype_)
    peer = np.median(times["fit on the kept rows (peer)"])
    print(f"\nremove 1000 of {n} x 128 (median of {rounds}):")
    for name, values in times.items():
        print(f"  {name:<28} {np.median(values):7.3f} s   {np.median(values) / peer:5.2f}x the peer")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--gallery", type=int, default=1_000_000)
    args = parser.parse_args()
    print(describe())
    work = Path(tempfile.mkdtemp(prefix="bench_update_"))
    env = {**os.environ, "SKRETRIEVAL_CACHE_DIR": str(work / "cache")}
    folder = work / "photos"
    write_jpegs(folder, args.n)
    backdate(folder.rglob("*.jpg"), 3600)
    cli("index", folder, "-o", work / "base.skr", "--device", "cpu", env=env)  # warms the cache too
    changed = change_one_percent(folder, args.n)
    times = {"index (peer)": [], "update": [], "update, nothing changed": []}
    said = {}
    for _ in range(args.rounds):
        commands = {
            "index (peer)": ("index", folder, "-o", work / "fresh.skr", "--device", "cpu"),
            "update": ("index", "--update", work / "model.skr", folder),
            "update, nothing changed": ("index", "--update", work / "model.skr", folder),
        }
        shutil.copyfile(work / "base.skr", work / "model.skr")
        for name, argv in commands.items():
            seconds, said[name] = cli(*argv, env=env)
            times[name].append(seconds)

    from skretrieval import load

    updated, fresh = load(work / "model.skr"), load(work / "fresh.skr")
    assert updated.prototype_ids_.tolist() == fresh.prototype_ids_.tolist()
    difference = float(np.abs(updated.prototype_ - fresh.prototype_).max())
    peer = np.median(times["index (peer)"])
    print(f"\n{args.n} photos, {changed} to encode after the change (median of {args.rounds}, whole command):")
    for name, values in times.items():
        print(f"  {name:<26} {np.median(values):7.2f} s   {peer / np.median(values):5.2f}x faster than the peer   ({said[name]})")
    print(f"  updated == fresh index: same {len(fresh.prototype_ids_)} paths in order, "
          f"largest feature difference {difference:.2e}")
    shutil.rmtree(work)
    bench_remove(args.gallery, args.rounds)


if __name__ == "__main__":
    main()
