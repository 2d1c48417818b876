"""The ``skretrieval`` command line: a thin argparse front end over the public API.

Commands: ``demo``, ``index`` (encode a folder into a model file; ``--update`` encodes
only what changed since), ``search`` (query it),
``evaluate`` (retrieval metrics of labelled queries) and ``duplicates`` (near-identical
images in a folder, or of a folder against a model's gallery). Results go to stdout, progress, warnings and errors to stderr. Exit
codes: 0 success, 1 failure (missing file, unreadable image with ``--on-error raise``, ...),
2 usage error.

``index``, ``search``, ``duplicates`` and ``evaluate`` take ``--on-error {raise,skip,warn}``
(default ``warn``): an image file that cannot be decoded stops the run (``raise``) or is left
out, and with ``warn`` each one left out is named on stderr (the first few, then a count).

Only the standard library is imported here: the package (torch, scikit-learn) is imported
inside the commands, so ``--help`` and usage errors answer at once.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
import time
from pathlib import Path

from ._modes import COMPILE_MODES, ENCODE_PRECISIONS

HEAD_CHOICES = ("linear", "arcface", "triplet", "supcon")  # skretrieval.heads.HEAD_NAMES (a test keeps them equal)

_USER_ERRORS = (ValueError, TypeError, OSError, RuntimeError, ImportError)
_ON_ERROR = ("raise", "skip", "warn")
_MAX_LISTED = 10  # unreadable files named one per line on stderr; the rest are counted


class _UsageError(Exception):
    """A wrong combination of options: exit code 2."""


def _demo(args) -> int:
    from ._demo import run_demo

    run_demo(
        args.encoder, image_size=args.image_size, topk=args.topk, batch_size=args.batch_size,
        device=args.device, verbose=1,
    )
    return 0


# ------------------------------------------------------------------------------------------
# index / search / evaluate / duplicates


def _image_files(paths) -> list[str]:
    """Image files of the given files and folders (folders recursively, sorted)."""
    from .io import list_image_files

    files = []
    for path in map(Path, paths):
        if path.is_dir():
            files += list_image_files(path)
        elif path.is_file():
            files.append(str(path))
        else:
            raise FileNotFoundError(f"{str(path)!r} does not exist; give image files or folders.")
    return [str(Path(f).resolve()) for f in files]


def _labelled_image_files(directory):
    """Image files below ``directory`` (resolved) and their class: the first folder under it."""
    from .io import list_labelled_images

    files, labels = list_labelled_images(directory)
    return [str(Path(f).resolve()) for f in files], labels


def _estimator_on_error(args) -> str:
    """The estimator's ``on_error``: the CLI reports skipped files itself, never as a Python warning."""
    return "raise" if args.on_error == "raise" else "skip"


def _report_skipped(args, reasons, total: int, what: str = "image") -> None:
    """Tell stderr which unreadable files were left out (``--on-error warn``) or how many (``skip``).

    ``reasons`` holds one message per file left out, each naming its file.
    """
    if not reasons:
        return
    prefix = f"skretrieval {args.command}: warning:"
    if args.on_error == "warn":
        for reason in reasons[:_MAX_LISTED]:
            print(f"{prefix} skipped {' '.join(reason.split())}", file=sys.stderr)
        if len(reasons) > _MAX_LISTED:
            print(f"{prefix} ... and {len(reasons) - _MAX_LISTED} more", file=sys.stderr)
    print(
        f"{prefix} skipped {len(reasons)} unreadable {what} file(s) of {total}"
        + ("" if args.on_error == "warn" else " (--on-error warn names them)"),
        file=sys.stderr,
    )


def _retriever(args):
    from . import ImageEncoder, ImageRetriever

    weights = None if args.weights.lower() == "none" else args.weights
    preprocessing = None if args.image_size is None else {"size": args.image_size}
    encoding = ImageEncoder(
        args.encoder, weights=weights, preprocessing=preprocessing, batch_size=args.batch_size,
        device=args.device, on_error=_estimator_on_error(args), n_jobs=args.n_jobs,
        compile=args.compile, encode_precision=args.precision,
    )
    return ImageRetriever(encoding, gallery_dtype=getattr(args, "gallery_dtype", "float32"), verbose=1, **_fine_tuning(args))


def _set_encoding(retriever, **options) -> None:
    """Set encoding options of a fitted model (whose encoder may be a name: a shortcut)."""
    retriever.set_params(encoder=retriever._options.set_params(**options))


def _fine_tuning(args) -> dict:
    """The fine-tuning parameters of ``index --head``: none for other commands."""
    if getattr(args, "head", None) is None:
        return {}
    if not args.labels_from_folders:
        raise _UsageError("--head trains on the gallery labels: pass --labels-from-folders too.")
    return {
        "head": args.head, "fine_tune": args.fine_tune, "max_epochs": args.max_epochs,
        "random_state": args.random_state,
    }


def _fit(args, directory):
    """Fit a retriever on every readable image below ``directory``; report the encoding speed.

    Unreadable files follow ``--on-error``; those left out are reported on stderr and are
    absent from ``retriever.prototype_ids_`` (the paths of the gallery rows).
    """
    if not Path(directory).is_dir():
        raise FileNotFoundError(f"{directory!r} is not a folder; give a folder of images.")
    if getattr(args, "labels_from_folders", False):
        files, labels = _labelled_image_files(directory)
    else:
        files, labels = _image_files([directory]), None
    retriever = _retriever(args)
    start = time.perf_counter()
    retriever.fit(files, labels)
    seconds = time.perf_counter() - start
    encoded = len(retriever.prototype_)
    print(
        f"encoded {encoded} images with {args.encoder!r} on {retriever.device_} in "
        f"{seconds:.1f} s ({encoded / seconds:.1f} images/s)",
        file=sys.stderr,
    )
    _report_skipped(args, [reason for _, _, reason in retriever.skipped_], len(files))
    return retriever


def _load_model(path):
    from . import load

    if not Path(path).is_file():
        raise FileNotFoundError(f"model file {str(path)!r} does not exist; create it with `skretrieval index`.")
    return load(path)


def _check_writable(path: str, option: str) -> None:
    """Fail before encoding, not after, when the file ``path`` cannot be written."""
    import tempfile

    target = Path(path)
    if target.is_dir():
        raise ValueError(f"{option} {path!r} is a folder; give the model file to write, e.g. {str(target / 'model.skr')!r}.")
    folder = target.resolve().parent
    if not folder.is_dir():
        raise FileNotFoundError(f"{option} {path!r}: folder {str(folder)!r} does not exist; create it first.")
    try:
        # The save writes a new file in the folder and renames it over the old one: a file
        # made there is the only sure test (ACLs, read-only mounts, root).
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise PermissionError(f"{option} {path!r} cannot be written: {exc.strerror or exc}.") from None


def _index(args) -> int:
    if args.update is not None:
        return _update(args)
    if args.output is None:
        raise _UsageError("give the model file to write, -o/--output MODEL (or --update MODEL to update one).")
    _check_writable(args.output, "-o/--output")
    retriever = _fit(args, args.gallery_dir)
    # --on-error applied to reading this gallery; the model file queries as any other
    # (Python users get an error for an unreadable query, not a row of NaN; `search` and
    # `evaluate` apply their own --on-error).
    _set_encoding(retriever, on_error="raise")
    retriever.save(args.output)
    labels = "" if not args.labels_from_folders else f", {len(retriever.classes_)} labels"
    skipped = f", {len(retriever.skipped_)} skipped" if retriever.skipped_ else ""
    print(
        f"indexed {len(retriever.prototype_)} images ({retriever.prototype_.shape[1]}-d{labels}{skipped})"
        f" -> {args.output}"
    )
    return 0


# index options that decide the features: --update encodes with the model's own
_FEATURE_OPTIONS = (
    "encoder", "weights", "image_size", "compile", "precision", "gallery_dtype", "head", "fine_tune", "max_epochs",
    "random_state",
)


def _update(args) -> int:
    """``index --update MODEL GALLERY_DIR``: encode only new and changed files (ImageRetriever.update).

    The model's encoder and options encode; ``--batch-size``, ``--n-jobs``, ``--device``
    and ``--on-error`` only change how. The new model replaces the old one atomically
    (the save writes a new file, then renames it), so an interrupted update leaves it as it was.
    """
    from . import load

    parser = command_parsers()["index"]
    given = [name for name in _FEATURE_OPTIONS if getattr(args, name) != parser.get_default(name)]
    if given or args.labels_from_folders:
        options = ", ".join(_option_name(parser, name) for name in given or ["labels_from_folders"])
        raise _UsageError(
            f"--update encodes with the model's own encoder, options and labels; leave out {options}"
            " (index the folder anew to change them)."
        )
    output = args.output or args.update
    if not Path(args.update).is_file():
        raise FileNotFoundError(f"model file {args.update!r} (--update) does not exist; create it with `skretrieval index`.")
    if not Path(args.gallery_dir).is_dir():
        raise FileNotFoundError(f"{args.gallery_dir!r} is not a folder; give the folder of gallery images.")
    _check_writable(output, "-o/--output" if args.output else "--update")
    retriever = load(args.update, device=None if args.device == parser.get_default("device") else args.device)
    labelled = _has_labels(retriever)  # labels follow the model: from the folders if it has them
    files, labels = _labelled_image_files(args.gallery_dir) if labelled else (_image_files([args.gallery_dir]), None)
    speed = {name: getattr(args, name) for name in ("batch_size", "n_jobs") if getattr(args, name) != parser.get_default(name)}
    _set_encoding(retriever, on_error=_estimator_on_error(args), **speed)
    retriever.set_params(verbose=1)
    retriever.update(files, labels)
    _report_skipped(args, [reason for _, _, reason in retriever.skipped_], len(files))
    _set_encoding(retriever, on_error="raise")
    retriever.save(output)
    labels = f", {len(retriever.classes_)} labels" if labelled else ""
    skipped = f", {len(retriever.skipped_)} skipped" if retriever.skipped_ else ""
    print(f"updated {len(retriever.prototype_)} images ({retriever.prototype_.shape[1]}-d{labels}{skipped}) -> {output}")
    return 0


def _option_name(parser, dest: str) -> str:
    return next("/".join(a.option_strings) for a in parser._actions if a.dest == dest)


def _has_labels(retriever) -> bool:
    return not retriever._labels_are_rows()


def _search(args) -> int:
    retriever = _load_model(args.model)
    files = _image_files(args.queries)
    retriever.set_params(verbose=int(len(files) > 1))
    _set_encoding(retriever, on_error=_estimator_on_error(args))
    similarities, indices = retriever.search(files, k=args.k)
    readable = indices[:, 0] >= 0  # a query left out by --on-error has no match (index -1)
    if not readable.all():
        reasons = [f"cannot read image {f!r}" for f, ok in zip(files, readable) if not ok]
        _check_some_readable(reasons, len(files), " ".join(args.queries))
        _report_skipped(args, reasons, len(files), "query image")
        files = [f for f, ok in zip(files, readable) if ok]
        similarities, indices = similarities[readable], indices[readable]
    labelled = _has_labels(retriever)
    threshold = _model_threshold(retriever, args)
    rejected = _rejected(similarities[:, 0], threshold)
    for query, scores, rows, reject in zip(files, similarities, indices, rejected):
        matches = [
            {
                "rank": rank,
                "path": str(retriever.prototype_ids_[i]),
                "score": round(float(score), 6),
                "label": _plain(retriever.prototype_labels_[i]) if labelled else None,
            }
            for rank, (score, i) in enumerate(zip(scores, rows), start=1)
        ]
        if args.json:
            line = {"query": query, "matches": matches}
            if threshold is not None:
                line.update(rejected=bool(reject), threshold=threshold)
            print(json.dumps(line))
        else:
            mark = f"  [rejected: no match reaches the threshold {threshold:.4f}]" if reject else ""
            print(f"query: {query}{mark}")
            print(f"  {'rank':>4}  {'score':>8}  {'label':<12}  path")
            for m in matches:
                label = "-" if m["label"] is None else str(m["label"])
                print(f"  {m['rank']:>4}  {m['score']:>8.4f}  {label:<12}  {m['path']}")
    if args.plot:
        _plot(retriever, files, similarities, indices, args.plot)
    return 0


def _check_some_readable(reasons, total: int, where: str) -> None:
    """Every query unreadable is an error, whatever ``--on-error`` says."""
    if len(reasons) == total:
        raise ValueError(
            f"all {total} query image(s) of {where!r} are unreadable (first: {reasons[0]}); nothing is left to query."
        )


def _threshold_option(text: str):
    """``--threshold``: a cosine similarity in [-1, 1], or ``auto``."""
    return "auto" if text.lower() == "auto" else _cosine_threshold(text)


def _rate_option(text: str) -> float:
    """``--false-match-rate``: a share in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text} is not a number; give a share in [0, 1].") from None
    if not 0.0 <= value <= 1.0:  # NaN too
        raise argparse.ArgumentTypeError(f"{text} is outside [0, 1]; give the share of strangers to let pass.")
    return value


def _model_threshold(retriever, args) -> float | None:
    """The threshold ``--threshold`` asks for: None, the number, or ``auto`` estimated on the model's gallery.

    ``auto`` holds each gallery label out in turn (each image, in a model without labels),
    as ``ImageRetriever(threshold="auto")`` does in ``fit``.
    """
    from ._open_set import fit_threshold

    return fit_threshold(args.threshold, args.false_match_rate, retriever._search_rows, retriever.prototype_labels_)


def _rejected(best_similarities, threshold):
    from ._open_set import rejected

    return rejected(best_similarities, threshold)


def _plain(value):
    """A numpy scalar as a JSON-ready Python value."""
    return value.item() if hasattr(value, "item") else value


def _plot(retriever, files, similarities, indices, path) -> None:
    """Draw the queries and the matches found (with the gallery labels, when there are any)."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError(
            "--plot needs matplotlib; install it with `pip install skretrieval[plot]`."
        ) from None
    matplotlib.use("Agg")
    from .plotting import RetrievalDisplay

    labels = retriever.prototype_labels_ if _has_labels(retriever) else None
    display = RetrievalDisplay.from_predictions(
        files, similarities, indices, retriever.prototype_ids_, gallery_labels=labels
    )
    display.figure_.savefig(path, dpi=100, bbox_inches="tight")
    print(f"plot written to {path}", file=sys.stderr)


def _evaluate(args) -> int:
    import numpy as np

    from .metrics import get_scorer, retrieval_report

    if not args.labels_from_folders:
        raise _UsageError("evaluate needs the query labels: pass --labels-from-folders.")
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    for name in metrics:
        if name != "accuracy":
            get_scorer(name)  # an unknown name fails before any encoding
    retriever = _load_model(args.model)
    if not _has_labels(retriever):
        raise ValueError(
            f"model {args.model!r} was indexed without labels; re-run `skretrieval index` with "
            "--labels-from-folders to evaluate it."
        )
    if not Path(args.query_dir).is_dir():
        raise FileNotFoundError(f"{args.query_dir!r} is not a folder; give a folder of labelled query images.")
    files, labels = _labelled_image_files(args.query_dir)
    _set_encoding(retriever, on_error=_estimator_on_error(args))
    features = retriever.transform(files)  # encoded once; every metric reuses them
    unreadable = np.isnan(features).any(axis=1)  # rows of queries skipped by --on-error
    if unreadable.any():
        reasons = [f"cannot read image {files[i]!r}" for i in np.flatnonzero(unreadable)]
        _check_some_readable(reasons, len(files), args.query_dir)
        _report_skipped(args, reasons, len(files), "query image")
        features, labels = features[~unreadable], labels[~unreadable]
    report = retrieval_report(retriever, features, labels, metrics, output_dict=args.json, embedded=True)
    figures = _open_set_figures(retriever, features, labels, args)
    if args.json:
        print(json.dumps(report if figures is None else {**report, "open_set": figures}))
    else:
        print(report)
        if figures is not None:
            print(f"\nopen set: {figures['unknown_queries']} of {len(labels)} queries have a label the gallery lacks")
            print("\n".join(f"  {name:<22} {value:.4f}" for name, value in figures.items() if name != "unknown_queries"))
    return 0


def _open_set_figures(retriever, features, labels, args) -> dict | None:
    """Open-set figures, when some query labels are missing from the gallery (else None).

    Threshold-free: the EER of accepting a query by its best match, and the
    detection-and-identification rate at ``--false-match-rate``; with ``--threshold``
    also the false match rate on the unknown queries, the false non-match rate on the
    known ones and the open-set accuracy at that threshold.
    """
    import numpy as np

    from .metrics import (
        detection_identification_rate,
        equal_error_rate,
        false_match_rate,
        false_non_match_rate,
        open_set_accuracy,
    )

    labels = np.asarray(labels)
    known = np.isin(labels, retriever.classes_)
    if known.all():
        return None
    # one search of the embedded queries: the best match, and the closed-set vote
    k = retriever._resolve_k(retriever.topk, False)
    similarities, indices = retriever.search(features, k=k, embedded=True)
    best, top1 = similarities[:, 0], retriever.prototype_labels_[indices[:, 0]]
    figures = {"unknown_queries": int((~known).sum())}
    if known.any():
        figures["detection_eer"] = equal_error_rate(best[known], best[~known])
        figures[f"dir@{args.false_match_rate:g}"] = detection_identification_rate(
            labels, top1, best, gallery_labels=retriever.classes_, false_alarm_rate=args.false_match_rate
        )
    threshold = _model_threshold(retriever, args)
    if threshold is not None:
        rejected = _rejected(best, threshold)
        y_pred = np.where(rejected, None, retriever._predict_neighbours(similarities, indices).astype(object))
        figures["threshold"] = threshold
        figures["false_match_rate"] = false_match_rate(best[~known], threshold)
        if known.any():
            figures["false_non_match_rate"] = false_non_match_rate(best[known], threshold)
        figures["open_set_accuracy"] = open_set_accuracy(
            labels, y_pred, gallery_labels=retriever.classes_, outlier_label=None
        )
    return figures


def _duplicates(args) -> int:
    if args.keep is not None and not args.list_removable:
        raise _UsageError("--keep chooses the image kept in each group of --list-removable; pass --list-removable too.")
    if args.against is not None:
        return _duplicates_against(args)
    retriever = _fit(args, args.directory)
    threshold = _duplicate_similarity(args, retriever)
    groups = retriever.find_duplicates(min_similarity=threshold)
    paths = retriever.prototype_ids_  # rows of the gallery: unreadable files are not among them
    if args.list_removable:
        _list_removable(args, groups, paths)
        return 0
    # The similarity of each image to its nearest other one, which is in its group: the
    # link that put it there.
    scores = retriever.search(k=1)[0][:, 0] if args.scores and groups else None
    for number, group in enumerate(groups, start=1):
        if args.json:
            line = {"group": number, "paths": [str(paths[i]) for i in group]}
            if scores is not None:
                line["scores"] = [round(float(scores[i]), 6) for i in group]
            print(json.dumps(line))
        else:
            print(f"group {number}: {len(group)} images")
            for i in group:
                print(f"  {paths[i]}" if scores is None else f"  {scores[i]:.4f}  {paths[i]}")
    print(
        f"{len(groups)} group(s) of near-identical images (similarity >= {threshold:.6g})",
        file=sys.stderr,
    )
    return 0


def _duplicate_similarity(args, retriever) -> float:
    """``--threshold``: the number, or ``auto`` with each gallery image left out in turn."""
    from ._open_set import duplicate_threshold

    if args.threshold != "auto":  # as find_duplicates(min_similarity="auto"), but printed
        return args.threshold
    return duplicate_threshold(args.false_match_rate, retriever._search_rows, len(retriever.prototype_ids_))


def _list_removable(args, groups, paths) -> None:
    """Print the files to remove, all but one of each group (``--keep``); nothing is deleted."""
    from ._duplicates import duplicates_to_remove

    keep = args.keep or "first"
    removable = 0
    for number, group in enumerate(groups, start=1):
        remove = [str(p) for p in duplicates_to_remove([group], paths, keep=keep)]
        removable += len(remove)
        if args.json:
            kept = next(str(paths[i]) for i in group if str(paths[i]) not in remove)
            print(json.dumps({"group": number, "keep": kept, "remove": remove}))
        else:
            print("\n".join(remove))
    print(
        f"{removable} file(s) to remove, one kept in each of {len(groups)} group(s) (--keep {keep}); "
        "nothing was deleted",
        file=sys.stderr,
    )


# Options that would encode the new images differently from the model's gallery.
_MODEL_ENCODING = ("encoder", "weights", "image_size", "compile", "precision")


def _duplicates_against(args) -> int:
    """The images of DIR that duplicate images of the model's gallery, with the model's encoder."""
    import numpy as np

    if args.keep is not None:
        raise _UsageError("with --against the gallery's image is kept and the new one listed; --keep applies to groups within DIR.")
    parser = command_parsers()["duplicates"]
    given = [name for name in _MODEL_ENCODING if getattr(args, name) != parser.get_default(name)]
    if given:
        option = "--" + given[0].replace("_", "-")
        raise _UsageError(f"--against encodes with the model's own encoder, so {option} does not apply; drop it.")
    retriever = _load_model(args.against)
    files = _image_files([args.directory])
    if not files:
        raise FileNotFoundError(f"no image files below {args.directory!r}; give a folder of images to check.")
    retriever.set_params(verbose=int(len(files) > 1))
    _set_encoding(
        retriever, on_error=_estimator_on_error(args), batch_size=args.batch_size, n_jobs=args.n_jobs,
        device=args.device,
    )
    features = retriever.transform(files)  # encoded once, with the model's encoder and head
    readable = ~np.isnan(features).any(axis=1)  # rows of images skipped by --on-error
    if not readable.all():
        reasons = [f"cannot read image {f!r}" for f, ok in zip(files, readable) if not ok]
        _check_some_readable(reasons, len(files), args.directory)
        _report_skipped(args, reasons, len(files))
    threshold = _duplicate_similarity(args, retriever)
    similarities, matches = retriever.find_duplicates(features, threshold, embedded=True, return_similarity=True)
    paths = retriever.prototype_ids_
    found = [i for i in range(len(files)) if len(matches[i])]
    for i in found:
        gallery = [str(paths[j]) for j in matches[i]]
        if args.list_removable:
            print(json.dumps({"remove": files[i], "duplicate_of": gallery[0]}) if args.json else files[i])
        elif args.json:
            line = {"query": files[i], "paths": gallery}
            if args.scores:
                line["scores"] = [round(float(score), 6) for score in similarities[i]]
            print(json.dumps(line))
        else:
            print(f"{files[i]}: {len(gallery)} gallery image(s)")
            for path, score in zip(gallery, similarities[i]):
                print(f"  {score:.4f}  {path}" if args.scores else f"  {path}")
    removable = "; nothing was deleted" if args.list_removable else ""
    print(
        f"{len(found)} of {int(readable.sum())} image(s) duplicate images of {args.against} "
        f"(similarity >= {threshold:.6g}){removable}",
        file=sys.stderr,
    )
    return 0


# ------------------------------------------------------------------------------------------
# the parser


def _encoder_options(parser) -> None:
    parser.add_argument("--encoder", default="efficientnet_lite0", help="encoder name (default: %(default)s)")
    parser.add_argument(
        "--weights", default="DEFAULT",
        help="DEFAULT, a torchvision weights name, a state-dict path, or none (default: %(default)s)",
    )
    parser.add_argument("--image-size", type=int, default=None, help="input size (default: the encoder's)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per batch (default: %(default)s)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, mps (default: %(default)s)")
    parser.add_argument(
        "--n-jobs", type=int, default=None,
        help="threads decoding images ahead of the encoder; -1: all CPUs (default: 1)",
    )
    parser.add_argument(
        "--compile", choices=COMPILE_MODES, default="auto",
        help="how the encoder runs: auto (ONNX Runtime on CPUs where the model exports, else "
        "torch), onnx, frozen TorchScript, torch.compile (inductor) or eager (off) "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--precision", choices=ENCODE_PRECISIONS, default="fp32",
        help="dtype the encoder computes in; bf16 is faster on CPUs with AMX/AVX512-BF16 and "
        "on GPUs, and moves results slightly (default: %(default)s)",
    )


def _cosine_threshold(text: str) -> float:
    """A cosine similarity in [-1, 1] (argparse prints the error as a usage error)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text} is not a number; give a cosine similarity in [-1, 1] (or auto)."
        ) from None
    if not -1.0 <= value <= 1.0:  # NaN too
        raise argparse.ArgumentTypeError(f"{text} is outside [-1, 1], the range of a cosine similarity.")
    return value


def _on_error_option(parser) -> None:
    parser.add_argument(
        "--on-error", choices=_ON_ERROR, default="warn",
        help="an image file that cannot be read: stop with an error (raise), leave it out "
        "(skip), or leave it out and name it on stderr (warn) (default: %(default)s)",
    )


def _threshold_options(parser, what: str, default=None) -> None:
    parser.add_argument(
        "--threshold", type=_threshold_option, default=default, metavar="{NUMBER,auto}",
        help=f"{what}; auto: chosen on the gallery so that about --false-match-rate of the "
        "images of an absent label (of unrelated images, for duplicates) pass it "
        + ("(default: none)" if default is None else "(default: %(default)s)"),
    )
    parser.add_argument(
        "--false-match-rate", type=_rate_option, default=0.05, metavar="RATE",
        help="share of strangers --threshold auto lets pass (default: %(default)s)",
    )


def _max_pixels_option(parser) -> None:
    parser.add_argument(
        "--max-image-pixels", type=int, default=None, metavar="N",
        help="refuse image files of more pixels, PIL's decompression-bomb limit "
        "(default: PIL's, 89478485); raise it for large images you trust",
    )


@contextlib.contextmanager
def _pixel_limit(args):
    """``PIL.Image.MAX_IMAGE_PIXELS`` set from ``--max-image-pixels`` while the command runs."""
    limit = getattr(args, "max_image_pixels", None)
    if limit is None:  # PIL is not even imported for it
        yield
        return
    if limit < 1:
        raise _UsageError(f"--max-image-pixels must be a positive number of pixels; got {limit}.")
    from PIL import Image

    previous, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, limit
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def build_parser() -> argparse.ArgumentParser:
    from ._version import __version__

    parser = argparse.ArgumentParser(prog="skretrieval", description="Image-to-image retrieval.")
    parser.add_argument("--version", action="version", version=f"skretrieval {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = commands.add_parser(
        "demo", help="Retrieve scikit-learn's digits with the pretrained default encoder (offline).",
        description="Fit on the digits train split, query with the test split, print Recall@1/5 "
        "and kNN accuracy.",
    )
    demo.add_argument("--encoder", default="efficientnet_lite0", help="encoder name (default: %(default)s)")
    demo.add_argument("--image-size", type=int, default=None, help="input size (default: the encoder's)")
    demo.add_argument("--topk", type=int, default=5, help="neighbours in the vote (default: %(default)s)")
    demo.add_argument("--batch-size", type=int, default=64, help="default: %(default)s")
    demo.add_argument("--device", default="auto", help="auto, cpu, cuda, mps (default: %(default)s)")
    demo.set_defaults(handler=_demo)

    index = commands.add_parser(
        "index", help="Encode a folder of images into a model file.",
        description="Encode every image below GALLERY_DIR (recursively: jpg, png, webp, bmp, tiff, "
        "...) and write the fitted retriever to a model file. With --update MODEL, only the "
        "images new or changed since MODEL was written are encoded.",
    )
    index.add_argument("gallery_dir", metavar="GALLERY_DIR", help="folder of gallery images")
    index.add_argument(
        "-o", "--output", metavar="MODEL",
        help="model file to write, e.g. model.skr (required, unless --update: then MODEL itself)",
    )
    index.add_argument(
        "--update", metavar="MODEL",
        help="update this model file to GALLERY_DIR: encode only the files new or changed since "
        "(path, size and modification time), drop the deleted ones, with the model's encoder; "
        "MODEL is replaced only once the new one is written",
    )
    index.add_argument(
        "--labels-from-folders", action="store_true",
        help="label each image by its class folder, the first folder under GALLERY_DIR "
        "(GALLERY_DIR/cat/any/depth/x.jpg is a cat), as torchvision's ImageFolder",
    )
    index.add_argument(
        "--head", choices=HEAD_CHOICES, default=None,
        help="fine-tune an embedding on the folder labels with this loss (needs "
        "--labels-from-folders; default: no training, the encoder's features)",
    )
    index.add_argument(
        "--fine-tune", choices=("head", "all"), default="head",
        help="with --head: train the projection only (head) or the encoder too (all) (default: %(default)s)",
    )
    index.add_argument(
        "--gallery-dtype", choices=("float32", "float16"), default="float32",
        help="storage of the gallery features: float16 halves the model file and the memory a "
        "search takes, results exact for the stored values (see docs/large_galleries.md) "
        "(default: %(default)s)",
    )
    index.add_argument("--max-epochs", type=int, default=10, help="with --head: training epochs (default: %(default)s)")
    index.add_argument("--random-state", type=int, default=0, help="with --head: training seed (default: %(default)s)")
    _encoder_options(index)
    _on_error_option(index)
    _max_pixels_option(index)
    index.set_defaults(handler=_index)

    search = commands.add_parser(
        "search", help="Find the gallery images most similar to query images.",
        description="Print the k best matches of each query: rank, similarity, label, path.",
    )
    search.add_argument("model", metavar="MODEL", help="model file written by `skretrieval index`")
    search.add_argument("queries", nargs="+", metavar="QUERY", help="query image files or folders")
    search.add_argument("-k", type=int, default=5, help="matches per query (default: %(default)s)")
    search.add_argument("--json", action="store_true", help="one JSON object per query (JSON lines)")
    search.add_argument("--plot", metavar="PNG", help="also draw the queries and matches to this image")
    _on_error_option(search)
    _threshold_options(search, "mark a query rejected when its best match is below this similarity")
    _max_pixels_option(search)
    search.set_defaults(handler=_search)

    evaluate = commands.add_parser(
        "evaluate", help="Retrieval metrics of labelled query images.",
        description="Query the model with every image below QUERY_DIR and report retrieval metrics; "
        "a match is relevant when its label equals the query's.",
    )
    evaluate.add_argument("model", metavar="MODEL", help="model file written by `skretrieval index --labels-from-folders`")
    evaluate.add_argument("query_dir", metavar="QUERY_DIR", help="folder of query images")
    evaluate.add_argument(
        "--labels-from-folders", action="store_true",
        help="label each query by its class folder, the first folder under QUERY_DIR (required)",
    )
    evaluate.add_argument(
        "--metrics", default="recall@1,recall@5,map@10",
        help="comma-separated names of skretrieval.metrics.get_scorer, or accuracy (default: %(default)s)",
    )
    evaluate.add_argument("--json", action="store_true", help="print a JSON object")
    _threshold_options(
        evaluate, "with queries of labels the gallery lacks: also report the false match rate, "
        "false non-match rate and open-set accuracy at this similarity",
    )
    _on_error_option(evaluate)
    _max_pixels_option(evaluate)
    evaluate.set_defaults(handler=_evaluate)

    duplicates = commands.add_parser(
        "duplicates", help="Find near-identical images in a folder, or already in a model's gallery.",
        description="Encode every image below DIR and print the groups of near-identical images: "
        "images are linked when their similarity reaches the threshold, a group is a chain of links. "
        "With --against MODEL: print each image of DIR that duplicates images of the model's gallery, "
        "and those, encoded with the model's encoder. Nothing is ever deleted.",
    )
    duplicates.add_argument("directory", metavar="DIR", help="folder of images (with --against: the new images)")
    duplicates.add_argument(
        "--against", metavar="MODEL", default=None,
        help="model file written by `skretrieval index`: match the images of DIR against its gallery",
    )
    _threshold_options(duplicates, "minimum cosine similarity", default=0.95)
    duplicates.add_argument("--json", action="store_true", help="one JSON object per group (JSON lines)")
    duplicates.add_argument(
        "--scores", action="store_true",
        help="also show each image's similarity to its nearest image in the group (with --against: "
        "to each gallery image it duplicates)",
    )
    duplicates.add_argument(
        "--list-removable", action="store_true",
        help="print only the files to remove, one per line: all but one image of each group (with "
        "--against: every image of DIR already in the gallery); nothing is deleted",
    )
    duplicates.add_argument(
        "--keep", choices=("first", "largest", "smallest"), default=None,
        help="with --list-removable: the image kept in each group, the first path in sorted order, "
        "or the largest or smallest file (default: first)",
    )
    _encoder_options(duplicates)
    _on_error_option(duplicates)
    _max_pixels_option(duplicates)
    duplicates.set_defaults(handler=_duplicates)
    return parser


def command_parsers() -> dict:
    """``{"": the top-level parser, "index": its parser, ...}`` (the docs and their test read it)."""
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {"": parser, **commands.choices}


# The library's errors name Python parameters; the CLI shows them as its options. A parameter
# maps to the option (argparse dest) of the same name unless listed here.
_OPTION_OF_PARAMETER = {
    "n_neighbors": "k",
    "topk": "k",  # demo has --topk itself: its own option comes first
    "encode_precision": "precision",
    "Preprocessing size": "image_size",
    "preprocessing": "image_size",
    "min_similarity": "threshold",
}
_PARAMETER = re.compile(
    r"The '(?P<quoted>\w+)' parameter of \w+"  # scikit-learn's parameter validation
    r"|\b(?P<assigned>\w+)=(?!=)"  # weights='x'
    r"|'[^']*'"  # any other quoted text (a path, a value) is left as it is
    r"|\b(?P<bare>[a-z]+_[a-z_]+|topk|Preprocessing size)\b"  # n_jobs, batch_size
)


def _with_cli_options(message: str, parser) -> str:
    """``message`` with the Python parameters it names written as ``parser``'s options."""
    options = {a.dest: "/".join(a.option_strings) for a in parser._actions if a.option_strings}

    def option(match):
        name = match["quoted"] or match["assigned"] or match["bare"]
        found = options.get(name) or options.get(_OPTION_OF_PARAMETER.get(name))
        if found is None:
            return match[0]
        return found + (" " if match["assigned"] else "")

    message = _PARAMETER.sub(option, message)
    for found in set(options.values()):  # "topk or n_neighbors" became "-k or -k"
        message = message.replace(f"{found} or {found}", found).replace(f"{found}/{found}", found)
    return message


def main(argv=None) -> int:
    """Run the command line; returns the exit code (0 success, 1 failure, 2 usage error)."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:  # no command: a usage error, answered with the whole help
        parser.print_help(sys.stderr)
        return 2
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version (0) or a usage error (2), already printed
        return 0 if exc.code is None else int(exc.code)
    try:
        with _pixel_limit(args):
            return args.handler(args)
    except _UsageError as exc:
        print(f"skretrieval {args.command}: error: {exc}", file=sys.stderr)
        print(f"hint: see `skretrieval {args.command} --help`.", file=sys.stderr)
        return 2
    except _USER_ERRORS as exc:
        message = _with_cli_options(" ".join(str(exc).split()) or type(exc).__name__, command_parsers()[args.command])
        print(f"skretrieval {args.command}: error: {message}", file=sys.stderr)
        print(f"hint: see `skretrieval {args.command} --help` for the accepted options.", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"skretrieval {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
