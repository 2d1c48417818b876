"""Images/s from a folder of JPEG photos to features: skretrieval's defaults against a plain torchvision loop.

    python benchmarks/bench_encode.py [--images DIR] [--n 600] [--repeats 3] [--device cpu]
                                      [--bf16] [--inductor] [--demo]

Without ``--images`` the script writes ``--n`` JPEG photos of 480x360 (quality 90) to a
temporary folder, in four class sub-folders: random crops (half to all of the photo, 4:3)
and flips of 14 real photos, the 12 that scikit-image bundles (astronaut, camera, chelsea,
coffee, coins, rocket, hubble_deep_field, immunohistochemistry, moon, clock, the left
stereo_motorcycle view, retina; camera, coins, moon and clock are grey JPEGs) and
scikit-learn's two (china, flower).

Every configuration encodes the whole folder with the default encoder (EfficientNet-Lite0,
ImageNet weights, 224 px) in its own fresh process, so "cold" means what a user's first
call pays: building the model, exporting it to ONNX (into an empty artefact cache), thread
pools, every cache miss. The clock runs from building the encoder to the last feature
(imports excluded, the same for every configuration):

* ``torchvision loop``: ``ImageFolder`` (PIL decode, ``Resize(256)``, ``CenterCrop(224)``,
  ``ToTensor``, ``Normalize``) + ``DataLoader(batch_size=64, num_workers=2)`` + the model in
  eval mode under ``torch.no_grad``, float32, eager: the reference of every ratio;
* ``defaults, cold``: ``ImageEncoder().fit(two_paths).transform(folder)`` with an empty
  artefact cache (``SKRETRIEVAL_CACHE_DIR`` pointed at a new folder): the export is timed;
* ``defaults, warm``: the same in another fresh process, after the cold one: the export
  is loaded from the cache;
* ``compile="off"`` (fp32 eager torch) and ``compile="freeze"`` (frozen TorchScript,
  fp32): the torch options that remain; ``--bf16`` adds ``encode_precision="bf16"`` eager
  and frozen (worth it only on CPUs with AMX-BF16 or AVX512-BF16), ``--inductor`` adds
  ``compile="inductor"`` fp32 and bf16 (torch.compile, ~30 s to compile);
* ``input side only``: the same decoding threads and preprocessing with a callable encoder
  that only averages pixels: the ceiling the input side puts on any encoder.

Rounds are interleaved (each round runs every configuration once, each in a new process)
and medians are reported. Features are compared (cosine per image) with torch eager fp32
(``compile="off"``) and with the plain loop (PIL resizing). ``--demo`` also runs the README
demo (digits) with the eager options and compares bf16 with fp32 features on ten splits.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _machine import describe  # noqa: E402

BATCH = 64
PHOTOS = (
    "astronaut", "camera", "chelsea", "coffee", "coins", "rocket", "hubble_deep_field",
    "immunohistochemistry", "moon", "clock", "stereo_motorcycle", "retina",
)


def real_photos():
    """The 14 photos as PIL images: scikit-image's bundled ones, then scikit-learn's two."""
    from PIL import Image
    from skimage import data
    from sklearn.datasets import load_sample_images

    photos = []
    for name in PHOTOS:
        image = getattr(data, name)()
        image = image[0] if isinstance(image, tuple) else image  # stereo pair: the left view
        photos.append(Image.fromarray(image))
    return photos + [Image.fromarray(image) for image in load_sample_images().images]


def write_jpegs(folder: Path, n: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    photos = real_photos()
    for i in range(n):
        photo = photos[i % len(photos)]
        width, height = photo.size
        crop_w = min(int(width * rng.uniform(0.5, 1.0)), int(height / 0.75))
        crop_h = int(crop_w * 0.75)
        x, y = rng.integers(0, width - crop_w + 1), rng.integers(0, height - crop_h + 1)
        image = photo.crop((x, y, x + crop_w, y + crop_h)).resize((480, 360), Image.BILINEAR)
        if rng.random() < 0.5:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        target = folder / f"class{i % 4}"
        target.mkdir(parents=True, exist_ok=True)
        image.save(target / f"{i:05d}.jpg", quality=90)


# -- what each fresh process runs -------------------------------------------------------


def run_loop(folder: Path, device: str, out: Path) -> dict:
    """The plain loop: ImageFolder + DataLoader + model."""
    import torch
    from torchvision import datasets
    from torchvision import transforms as T

    from skretrieval.encoders import create_encoder

    start = time.perf_counter()
    built = create_encoder("efficientnet_lite0")
    model = built.module.eval().to(device)
    prep = built.preprocessing
    transform = T.Compose([
        T.Resize(round(224 / prep.crop_pct)), T.CenterCrop(224), T.ToTensor(), T.Normalize(prep.mean, prep.std),
    ])
    loader = torch.utils.data.DataLoader(
        datasets.ImageFolder(str(folder), transform=transform), batch_size=BATCH, num_workers=2
    )
    features = []
    with torch.no_grad():
        for images, _ in loader:
            features.append(model(images.to(device)).cpu())
    seconds = time.perf_counter() - start
    np.save(out, torch.cat(features).numpy())
    return {"seconds": seconds}


def run_ours(folder: Path, device: str, out: Path, params: dict) -> dict:
    """``ImageEncoder(**params).fit(two files).transform(folder)``, as a user's first call."""
    from skretrieval import ImageEncoder
    from skretrieval.io import list_image_files

    files = list_image_files(folder)
    start = time.perf_counter()
    encoder = ImageEncoder(device=device, **params).fit(files[:2])
    fitted = time.perf_counter()
    features = encoder.transform(str(folder))
    seconds = time.perf_counter() - start
    runner = encoder._inference_runner
    if out is not None:
        np.save(out, features)
    return {
        "seconds": seconds, "fit": fitted - start,
        "warmup": sum(runner.warmup_seconds.values()), "exported": runner.exported, "builds": runner.builds,
    }


def run_input_side(folder: Path, device: str) -> dict:
    """Decoding threads and preprocessing only: a callable encoder that averages pixels."""
    from skretrieval import ImageEncoder

    start = time.perf_counter()
    ImageEncoder(lambda x: x.mean(dim=(2, 3)), device=device, batch_size=BATCH).fit(np.zeros((1, 8, 8, 3))).transform(str(folder))
    return {"seconds": time.perf_counter() - start}


def worker(args) -> None:
    job = json.loads(args.worker)
    folder, out = Path(job["folder"]), job.get("out")
    if job["kind"] == "loop":
        result = run_loop(folder, job["device"], Path(out))
    elif job["kind"] == "input":
        result = run_input_side(folder, job["device"])
    else:
        result = run_ours(folder, job["device"], None if out is None else Path(out), job["params"])
    print("RESULT " + json.dumps(result))


def in_fresh_process(job: dict, env: dict | None = None) -> dict:
    result = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(job)],
        capture_output=True, text=True, env={**os.environ, **(env or {})},
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    if result.returncode != 0 or not lines:
        raise RuntimeError(f"{job['kind']} failed:\n{result.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


# -- the digits demo (--demo) -----------------------------------------------------------


def demo_check(device: str) -> None:
    from skretrieval import ImageEncoder, ImageRetriever
    from skretrieval._demo import load_digit_split
    from skretrieval.metrics import retrieval_report

    X_gallery, X_query, y_gallery, y_query = load_digit_split()
    configs = [
        ("defaults", {}),
        ("fp32 eager", {"compile": "off"}),
        ("bf16 eager", {"compile": "off", "encode_precision": "bf16"}),
        ("bf16 freeze", {"compile": "freeze", "encode_precision": "bf16"}),
    ]
    for name, params in configs:
        start = time.perf_counter()
        encoding = ImageEncoder(batch_size=BATCH, device=device, **params)
        retriever = ImageRetriever(encoding).fit(X_gallery, y_gallery)
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

    from skretrieval import ImageEncoder, ImageRetriever

    digits = load_digits()
    X, y = digits.images / 16.0, digits.target
    features = {
        precision: ImageEncoder(batch_size=BATCH, device=device, compile="off", encode_precision=precision)
        .fit(X[:1]).transform(X)
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


# -- the parent: interleaved rounds -----------------------------------------------------


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, help="a folder of images (default: write JPEGs)")
    parser.add_argument("--n", type=int, default=600, help="JPEG files to write without --images")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--device", default="cpu", help="'cuda' for a GPU (not measured in RESULTS.md)")
    parser.add_argument("--bf16", action="store_true", help="also time encode_precision='bf16' (needs AMX/AVX512-BF16)")
    parser.add_argument("--inductor", action="store_true", help="also time compile='inductor' (C++ compiler)")
    parser.add_argument("--demo", action="store_true", help="also check the demo's metrics")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    print(describe())

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = args.images
        if folder is None:
            folder = tmp / "jpegs"
            write_jpegs(folder, args.n)
        n = sum(1 for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        print(f"{n} images under {folder}; batch {BATCH} (loop), 32 (ours, the default); device {args.device}")

        options = {
            'compile="off" (fp32 eager)': {"compile": "off"},
            'compile="freeze" (fp32)': {"compile": "freeze"},
        }
        if args.bf16:
            options['bf16 eager'] = {"compile": "off", "encode_precision": "bf16"}
            options['bf16 freeze'] = {"compile": "freeze", "encode_precision": "bf16"}
        if args.inductor:
            options['fp32 inductor'] = {"compile": "inductor"}
            options['bf16 inductor'] = {"compile": "inductor", "encode_precision": "bf16"}
        names = ["torchvision loop", "defaults, cold", "defaults, warm", *options, "input side only"]
        seconds = {name: [] for name in names}
        details = {"defaults, cold": [], "defaults, warm": []}
        files = {name: tmp / f"{i}.npy" for i, name in enumerate(names)}
        base = {"folder": str(folder), "device": args.device}
        for round_ in range(args.repeats):
            artefacts = {"SKRETRIEVAL_CACHE_DIR": str(tmp / f"artefacts-{round_}")}  # empty: cold
            for name in names:
                if name == "torchvision loop":
                    result = in_fresh_process({**base, "kind": "loop", "out": str(files[name])})
                elif name == "input side only":
                    result = in_fresh_process({**base, "kind": "input"})
                elif name.startswith("defaults"):
                    result = in_fresh_process({**base, "kind": "ours", "params": {}, "out": str(files[name])}, artefacts)
                    details[name].append(result)
                else:
                    result = in_fresh_process({**base, "kind": "ours", "params": options[name], "out": str(files[name])}, artefacts)
                seconds[name].append(result["seconds"])
            loop = seconds["torchvision loop"][-1]
            print(
                f"round {round_ + 1}/{args.repeats}: "
                + ", ".join(f"{name} {n / s[-1]:.1f} img/s ({loop / s[-1]:.2f}x)" for name, s in seconds.items()),
                flush=True,
            )

        print()
        print(f"{'configuration':30s} {'img/s':>7s} {'x loop':>7s}   per round (x loop)")
        for name, times in seconds.items():
            ratios = [loop / t for loop, t in zip(seconds["torchvision loop"], times)]
            print(
                f"{name:30s} {n / statistics.median(times):7.1f} {statistics.median(ratios):7.2f}   "
                + " ".join(f"{r:.2f}" for r in ratios)
            )
        for name, runs in details.items():
            print(
                f"{name}: fit {statistics.median(r['fit'] for r in runs):.2f} s, ONNX export/load + session "
                f"{statistics.median(r['warmup'] for r in runs):.2f} s, exported {[r['exported'] for r in runs]}, "
                f"runtime {runs[0]['builds']}"
            )
        eager = np.load(files['compile="off" (fp32 eager)'])
        loop_features = np.load(files["torchvision loop"])
        print()
        for name in names:
            if name in ("input side only",) or not files[name].exists():
                continue
            c = cosines(np.load(files[name]), eager)
            p = cosines(np.load(files[name]), loop_features)
            print(
                f"cosine of {name:28s} to torch eager fp32: min {c.min():.5f} mean {c.mean():.6f}; "
                f"to the loop (PIL resize): min {p.min():.4f} mean {p.mean():.4f}"
            )
    if args.demo:
        print()
        demo_check(args.device)


if __name__ == "__main__":
    main()
