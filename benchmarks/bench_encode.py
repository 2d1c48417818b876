"""Images/s from a folder of JPEG files to features: skretrieval against a plain torchvision loop.

    python benchmarks/bench_encode.py [--images DIR] [--n 1024] [--repeats 3] [--device cpu]
                                      [--no-inductor] [--demo]

Without ``--images`` the script writes ``--n`` JPEG files of 480x360 (quality 90: random
crops, flips of scikit-learn's two bundled photos) to a temporary folder, in four class
sub-folders. Every configuration encodes the whole folder with the default encoder
(EfficientNet-Lite0, ImageNet weights, 224 px), batch 64:

* ``torchvision loop``: ``ImageFolder`` (PIL decode, ``Resize(256)``, ``CenterCrop(224)``,
  ``ToTensor``, ``Normalize``) + ``DataLoader`` (``num_workers`` 0 and 2; the faster one is
  the reference) + the model in eval mode under ``torch.no_grad``, float32;
* ``fp32 eager``: ``ImageEncoder(compile="off")`` (what the defaults do below 8,192 images);
* ``bf16 eager``: ``encode_precision="bf16"``;
* ``bf16 freeze``: ``compile="freeze", encode_precision="bf16"`` (frozen TorchScript);
* ``fp32 inductor`` (what the defaults do from 8,192 images) and ``bf16 inductor``:
  ``compile="inductor"`` (torch.compile; skip both with ``--no-inductor``). The warm-up may
  come from inductor's on-disk cache of an earlier run; set ``TORCHINDUCTOR_CACHE_DIR`` to an
  empty folder to time a first compilation.

Rounds are interleaved (each round runs every configuration once) and the median is
reported. "cold" is the first call of a fresh estimator (building frozen/compiled copies
included); "warm" the calls after it. Features are compared with the fp32 eager path
(cosine per image). ``--demo`` also runs the README demo (digits) in each configuration and
prints Recall@1 / Recall@5 / kNN accuracy, and compares bf16 with fp32 eager features on ten
splits of the digits (the demo's split with random_state 0..9).
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _machine import describe  # noqa: E402

from skretrieval import ImageEncoder  # noqa: E402

BATCH = 64


def write_jpegs(folder: Path, n: int) -> None:
    from PIL import Image
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(0)
    photos = [Image.fromarray(image) for image in load_sample_images().images]
    for i in range(n):
        photo = photos[i % len(photos)]
        width, height = photo.size
        crop_w = int(width * rng.uniform(0.5, 1.0))
        crop_h = min(int(crop_w * 0.75), height)
        x, y = rng.integers(0, width - crop_w + 1), rng.integers(0, height - crop_h + 1)
        image = photo.crop((x, y, x + crop_w, y + crop_h)).resize((480, 360), Image.BILINEAR)
        if rng.random() < 0.5:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        target = folder / f"class{i % 4}"
        target.mkdir(parents=True, exist_ok=True)
        image.save(target / f"{i:05d}.jpg", quality=90)


def torchvision_loop(folder: Path, num_workers: int, device: str):
    """The plain loop: ImageFolder + DataLoader + model; returns (features, seconds)."""
    from torchvision import datasets
    from torchvision import transforms as T

    from skretrieval.encoders import create_encoder

    built = create_encoder("efficientnet_lite0")
    model = built.module.eval().to(device)
    prep = built.preprocessing
    transform = T.Compose([
        T.Resize(round(224 / prep.crop_pct)), T.CenterCrop(224), T.ToTensor(), T.Normalize(prep.mean, prep.std),
    ])
    loader = torch.utils.data.DataLoader(
        datasets.ImageFolder(str(folder), transform=transform), batch_size=BATCH, num_workers=num_workers
    )
    start = time.perf_counter()
    features = []
    with torch.no_grad():
        for images, _ in loader:
            features.append(model(images.to(device)).cpu())
    return torch.cat(features).numpy(), time.perf_counter() - start


def ours(folder: Path, params: dict, device: str, warm_calls: int):
    """A fresh ImageEncoder: (features, cold seconds, warm seconds per call, warm-up seconds)."""
    encoder = ImageEncoder(batch_size=BATCH, device=device, **params).fit(str(folder))
    start = time.perf_counter()
    features = encoder.transform(str(folder))
    cold = time.perf_counter() - start
    warm = []
    for _ in range(warm_calls):
        start = time.perf_counter()
        encoder.transform(str(folder))
        warm.append(time.perf_counter() - start)
    warmup = sum(encoder._inference_runner.warmup_seconds.values())
    return features, cold, min(warm) if warm else float("nan"), warmup


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def demo_check(device: str) -> None:
    from skretrieval import ImageRetriever
    from skretrieval._demo import load_digit_split
    from skretrieval.metrics import retrieval_report

    X_gallery, X_query, y_gallery, y_query = load_digit_split()
    configs = [
        ("fp32 eager", {"compile": "off"}),
        ("bf16 eager", {"compile": "off", "encode_precision": "bf16"}),
        ("bf16 freeze", {"compile": "freeze", "encode_precision": "bf16"}),
        ("bf16 inductor", {"compile": "inductor", "encode_precision": "bf16"}),
    ]
    for name, params in configs:
        start = time.perf_counter()
        retriever = ImageRetriever(
            ImageEncoder(batch_size=BATCH, device=device),
            **params,
        ).fit(X_gallery, y_gallery)
        metrics = ["recall@1", "recall@5", "accuracy"]
        report = retrieval_report(retriever, X_query, y_query, metrics, output_dict=True)
        seconds = time.perf_counter() - start
        print(
            f"demo {name:13s}: Recall@1 {report['recall@1']:.4f}  Recall@5 {report['recall@5']:.4f}  "
            f"kNN accuracy {report['accuracy']:.4f}  ({seconds:.0f} s)"
        )
    splits_check(device)


def splits_check(device: str, n_splits: int = 10) -> None:
    """bf16 against fp32 eager features of all digits, over the demo's split with other seeds."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from skretrieval import ImageRetriever

    digits = load_digits()
    X, y = digits.images / 16.0, digits.target
    features = {
        precision: ImageEncoder(batch_size=BATCH, device=device, encode_precision=precision).fit(X[:1]).transform(X)
        for precision in ("fp32", "bf16")
    }
    scores = {precision: [] for precision in features}
    for seed in range(n_splits):
        gallery, queries = train_test_split(np.arange(len(y)), test_size=0.25, stratify=y, random_state=seed)
        for precision, F in features.items():
            model = ImageRetriever(
                ImageEncoder("precomputed", device=device),
                topk=5,
            ).fit(F[gallery], y[gallery])
            nearest = model.kneighbors(F[queries], 5, return_distance=False)
            hits = y[gallery][nearest] == y[queries][:, None]
            scores[precision].append((hits[:, 0].mean(), hits.any(1).mean(), model.score(F[queries], y[queries])))
    difference = np.array(scores["bf16"]) - np.array(scores["fp32"])
    for column, metric in enumerate(["Recall@1", "Recall@5", "kNN accuracy"]):
        d = difference[:, column]
        print(
            f"bf16 - fp32 over {n_splits} splits, {metric:12s}: mean {d.mean():+.4f}, "
            f"{(d < 0).sum()} lower, {(d > 0).sum()} higher, {(d == 0).sum()} equal"
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, help="a folder of images (default: write JPEGs)")
    parser.add_argument("--n", type=int, default=1024, help="JPEG files to write without --images")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--device", default="cpu", help="'cuda' for a GPU (not measured in RESULTS.md)")
    parser.add_argument("--no-inductor", action="store_true", help="skip compile='inductor' (no C++ compiler)")
    parser.add_argument("--demo", action="store_true", help="also check the demo's Recall@1")
    args = parser.parse_args()
    print(describe())

    with tempfile.TemporaryDirectory() as tmp:
        folder = args.images
        if folder is None:
            folder = Path(tmp) / "jpegs"
            write_jpegs(folder, args.n)
        n = sum(1 for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        print(f"{n} images under {folder}; batch {BATCH}; device {args.device}")

        configs = {
            "fp32 eager": {"compile": "off"},
            "bf16 eager": {"compile": "off", "encode_precision": "bf16"},
            "bf16 freeze": {"compile": "freeze", "encode_precision": "bf16"},
        }
        if not args.no_inductor:
            configs["fp32 inductor"] = {"compile": "inductor"}
            configs["bf16 inductor"] = {"compile": "inductor", "encode_precision": "bf16"}
        loop_times = {0: [], 2: []}
        cold, warm, warmup = ({name: [] for name in configs} for _ in range(3))
        features, loop_features = {}, None
        for round_ in range(args.repeats):
            for workers in loop_times:
                loop_features, seconds = torchvision_loop(folder, workers, args.device)
                loop_times[workers].append(seconds)
            for name, params in configs.items():
                feats, c, w, up = ours(folder, params, args.device, warm_calls=1)
                features[name] = feats
                cold[name].append(c)
                warm[name].append(w)
                warmup[name].append(up)
            loops = ", ".join(f"{w} workers {n / t[-1]:.1f}" for w, t in loop_times.items())
            ours_ = ", ".join(f"{name} {n / cold[name][-1]:.1f}/{n / warm[name][-1]:.1f}" for name in configs)
            print(f"round {round_ + 1}/{args.repeats} img/s: loop {loops}; cold/warm {ours_}", flush=True)

        loop_rate = max(n / statistics.median(times) for times in loop_times.values())
        print()
        print(f"{'configuration':26s} {'cold img/s':>10s} {'warm img/s':>10s} {'x loop':>7s} {'warm-up s':>9s}")
        for workers, times in loop_times.items():
            rate = n / statistics.median(times)
            print(f"{f'torchvision loop, {workers} workers':26s} {rate:10.1f} {'':>10s} {rate / loop_rate:7.2f}")
        for name in configs:
            cold_rate, warm_rate = n / statistics.median(cold[name]), n / statistics.median(warm[name])
            print(
                f"{name:26s} {cold_rate:10.1f} {warm_rate:10.1f} {warm_rate / loop_rate:7.2f} "
                f"{statistics.median(warmup[name]):9.1f}"
            )
        reference = features["fp32 eager"]
        print()
        for name in configs:
            c = cosines(features[name], reference)
            print(f"cosine to fp32 eager, {name:26s} min {c.min():.5f}  mean {c.mean():.6f}")
        c = cosines(loop_features, reference)
        print(f"cosine to fp32 eager, {'torchvision loop (PIL)':26s} min {c.min():.5f}  mean {c.mean():.6f}")
    if args.demo:
        print()
        demo_check(args.device)


if __name__ == "__main__":
    main()
