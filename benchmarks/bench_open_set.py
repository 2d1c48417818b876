"""Open-set retrieval on images: closed set against threshold="auto" at two false match rates.

    python benchmarks/bench_open_set.py [--splits 10] [--withheld 3] [--image-size 224] [--device cpu]

scikit-learn's digits (1,797 8x8 images, divided by 16) are encoded once with the default
encoder (pretrained EfficientNet-Lite0). In each split, ``--withheld`` random digits are
never enrolled; half of the images of the other digits (every other image of each digit)
are the gallery, the rest of them are known-class queries, and every image of a withheld
digit is an unknown-class query. On the same features, three retrievers (topk=5) answer:
closed set (threshold=None) and threshold="auto" at false_match_rate 0.01 and 0.05, with
outlier_label=-1. Reported per retriever, mean and range over the splits:

* FMR: share of unknown-class queries accepted (the promise is false_match_rate);
* known accuracy: share of known-class queries answered with their label (a rejection is
  wrong);
* open-set accuracy: a right label on known queries, a rejection on unknown ones;
* fit overhead: the extra time of an "auto" fit over a closed-set fit on the same features
  (fits interleaved), as a share of the time encoding that gallery's images took.
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits

sys.path.insert(0, str(Path(__file__).parent))
from _machine import describe  # noqa: E402

from skretrieval import ImageEncoder, ImageRetriever  # noqa: E402
from skretrieval.metrics import open_set_accuracy  # noqa: E402

RATES = (0.01, 0.05)


def split(y, rng, n_withheld):
    withheld = rng.choice(10, size=n_withheld, replace=False)
    enrolled = ~np.isin(y, withheld)
    rank = np.zeros(len(y), dtype=int)
    for digit in range(10):  # every other image of each digit goes to the gallery
        rank[y == digit] = np.arange((y == digit).sum())
    gallery = enrolled & (rank % 2 == 0)
    return np.sort(withheld), gallery


def evaluate(retriever, features, y, gallery):
    queries = ~gallery
    start = time.perf_counter()
    retriever.fit(features[gallery], y[gallery])
    seconds = time.perf_counter() - start
    y_pred, y_true = retriever.predict(features[queries]), y[queries]
    known = np.isin(y_true, y[gallery])
    return {
        "fmr": float(np.mean(y_pred[~known] != -1)),
        "known_accuracy": float(np.mean(y_pred[known] == y_true[known])),
        "open_set_accuracy": open_set_accuracy(y_true, y_pred, gallery_labels=y[gallery], outlier_label=-1),
        "seconds": seconds,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--splits", type=int, default=10)
    parser.add_argument("--withheld", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=None, help="default: the encoder's (224)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    print(describe())

    digits = load_digits()
    images, y = digits.images / 16.0, digits.target
    prep = None if args.image_size is None else {"size": args.image_size}
    start = time.perf_counter()
    features = ImageRetriever(
        ImageEncoder(preprocessing=prep, device=args.device, batch_size=64),
    ).fit(images).prototype_
    per_image = (time.perf_counter() - start) / len(images)
    print(f"encoded {len(images)} digits with efficientnet_lite0 in {per_image * len(images):.1f} s")

    configs = {"closed set": {"threshold": None}}
    configs.update({f'auto, fmr={rate}': {"threshold": "auto", "false_match_rate": rate} for rate in RATES})
    results = {name: [] for name in configs}
    rng = np.random.default_rng(0)
    for number in range(args.splits):
        withheld, gallery = split(y, rng, args.withheld)
        for name, params in configs.items():  # interleaved, so the fit-time ratio shares the machine's state
            retriever = ImageRetriever(
                ImageEncoder("precomputed", device=args.device),
                topk=5, outlier_label=-1, **params,
            )
            results[name].append(evaluate(retriever, features, y, gallery))
        row = "  ".join(f"{name}: FMR {r[-1]['fmr']:.3f}" for name, r in results.items())
        print(f"split {number}: withheld {withheld.tolist()}, gallery {gallery.sum()}  {row}")

    print(f"\n{args.splits} splits, {args.withheld} digits withheld; mean [min, max]")
    print(f"{'retriever':<16} {'FMR (unknown)':>22} {'known accuracy':>22} {'open-set accuracy':>22} {'fit overhead':>13}")
    closed_time = np.array([r["seconds"] for r in results["closed set"]])
    encoding = per_image * gallery.sum()  # galleries differ by a few images between splits
    for name, rows in results.items():
        cells = []
        for key in ("fmr", "known_accuracy", "open_set_accuracy"):
            values = np.array([r[key] for r in rows])
            cells.append(f"{values.mean():.3f} [{values.min():.3f}, {values.max():.3f}]")
        overhead = np.median(np.array([r["seconds"] for r in rows]) - closed_time) / encoding
        print(f"{name:<16} {cells[0]:>22} {cells[1]:>22} {cells[2]:>22} {overhead:>12.1%}")


if __name__ == "__main__":
    main()
