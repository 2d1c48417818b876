"""GridSearchCV with memory= against one fit + one score, on the same images.

    python benchmarks/bench_gridsearch.py [--n-images 1797] [--image-size 224] [--device cpu]

A 3 x 4 grid over similarity_fn and topk with cv=3 and scoring=get_scorer("map@10"), its
feature cache in a fresh temporary directory, is timed against one fit + one score of the
same retriever without a cache. The ratio is the number to read (the goal is <= 2.0).
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

from sklearn.datasets import load_digits
from sklearn.model_selection import GridSearchCV

sys.path.insert(0, str(Path(__file__).parent))
from _machine import describe  # noqa: E402

from skretrieval import ImageEncoder, ImageRetriever  # noqa: E402
from skretrieval.metrics import get_scorer  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-images", type=int, default=1797)
    parser.add_argument("--image-size", type=int, default=None, help="default: the encoder's (224)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    print(describe())

    digits = load_digits()
    X, y = digits.images[: args.n_images] / 16.0, digits.target[: args.n_images]
    prep = None if args.image_size is None else {"size": args.image_size}
    params = dict(preprocessing=prep, device=args.device, batch_size=64)  # the encoding options

    start = time.perf_counter()
    retriever = ImageRetriever(ImageEncoder(**params)).fit(X, y)
    retriever.score(X, y)
    baseline = time.perf_counter() - start

    with tempfile.TemporaryDirectory() as cache:
        grid = GridSearchCV(
            ImageRetriever(ImageEncoder(memory=cache, **params)),
            {"similarity_fn": ["cosine", "euclidean", "dot"], "topk": [1, 3, 5, 10]},
            cv=3,
            scoring=get_scorer("map@10"),
        )
        start = time.perf_counter()
        grid.fit(X, y)
        searched = time.perf_counter() - start

    print(f"images: {len(X)}, input size: {args.image_size or 'encoder default'}")
    print(f"one fit + one score (no cache): {baseline:.1f} s")
    print(f"GridSearchCV 12 candidates x 3 folds, memory=: {searched:.1f} s")
    print(f"ratio: {searched / baseline:.2f} (goal <= 2.0); best {grid.best_params_}, map@10 {grid.best_score_:.4f}")


if __name__ == "__main__":
    main()
