"""Fine-tuning on load_digits: Recall@1 of the frozen encoder, a trained head, and full fine-tuning.

    python benchmarks/bench_finetune.py [--size 64] [--seeds 0 1 2] [--device cpu]

Digits (8x8, scaled by 1/16) are split with train_test_split(test_size=0.25, stratify=y,
random_state=0); the train part is the gallery and the test part the queries. Recall@1 is the
fraction of queries whose top-1 gallery neighbour has the query's label. The encoder is the
default EfficientNet-Lite0 with ImageNet weights, at input size --size. Three configurations:

* frozen: no training (head=None);
* head:   head="arcface", fine_tune="head" (encoder frozen, the gallery encoded once);
* all:    head="arcface", fine_tune="all" (encoder trained too, images re-encoded per epoch).

Each runs with every seed (random_state); the table gives mean +- std and the fit time, with
the Recall@1 gain and the time ratio against the frozen encoder of the same run.
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

sys.path.insert(0, str(Path(__file__).parent))
from _machine import describe  # noqa: E402

from skretrieval import ImageEncoder, ImageRetriever  # noqa: E402

CONFIGS = {
    "frozen": {},
    "head": {"head": "arcface", "fine_tune": "head", "embedding_dim": 128, "max_epochs": 30},
    "all": {"head": "arcface", "fine_tune": "all", "embedding_dim": 128, "max_epochs": 5},
}


def recall_at_1(retriever, X_test, y_test, y_gallery) -> float:
    nearest = retriever.kneighbors(X_test, 1, return_distance=False)[:, 0]
    return float(np.mean(y_gallery[nearest] == y_test))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=64, help="encoder input size (digits are 8x8)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    print(describe())

    digits = load_digits()
    X_train, X_test, y_train, y_test = train_test_split(
        digits.images / 16.0, digits.target, test_size=0.25, stratify=digits.target, random_state=0
    )
    encoding = ImageEncoder(preprocessing={"size": args.size}, device=args.device, batch_size=64)
    results = {}
    for name, params in CONFIGS.items():
        scores, times = [], []
        for seed in args.seeds:
            start = time.perf_counter()
            retriever = ImageRetriever(encoding, **params, random_state=seed).fit(X_train, y_train)
            times.append(time.perf_counter() - start)
            scores.append(recall_at_1(retriever, X_test, y_test, y_train))
            print(f"  {name:6s} seed {seed}: Recall@1 {scores[-1]:.4f}, fit {times[-1]:.1f} s", flush=True)
        results[name] = (np.array(scores), np.array(times))

    base_score, base_time = results["frozen"][0].mean(), results["frozen"][1].mean()
    print(f"\ngallery {len(X_train)}, queries {len(X_test)}, input size {args.size}, seeds {args.seeds}")
    print("| config | Recall@1 (mean ± std) | gain vs frozen | fit time (s) | time vs frozen |")
    print("|---|---|---|---|---|")
    for name, (scores, times) in results.items():
        print(
            f"| {name} | {scores.mean():.4f} ± {scores.std():.4f} | {scores.mean() - base_score:+.4f} | "
            f"{times.mean():.1f} | {times.mean() / base_time:.1f}x |"
        )


if __name__ == "__main__":
    main()
