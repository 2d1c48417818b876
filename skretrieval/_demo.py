"""The offline demo: retrieve handwritten digits with the pretrained default encoder."""

from __future__ import annotations

import time


def load_digit_split(random_state: int = 0):
    """scikit-learn's bundled digits as [0, 1] images, split 75/25 stratified.

    Returns ``X_gallery, X_query, y_gallery, y_query`` with images of shape (n, 8, 8).
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = digits.images / 16.0  # digits are 0..16; images must lie in [0, 1]
    return train_test_split(
        images, digits.target, test_size=0.25, stratify=digits.target, random_state=random_state
    )


def run_demo(encoder="efficientnet_lite0", *, image_size=None, topk=5, batch_size=64, device="auto", verbose=1):
    """Fit on the digits gallery, query with the held-out digits, return the metrics.

    Parameters
    ----------
    encoder : str, default="efficientnet_lite0"
        Encoder name.
    image_size : int, default=None
        Input size the 8x8 digits are resized to; the encoder's own (224) when None.
    topk : int, default=5
        Neighbours in the kNN vote.
    batch_size : int, default=64
    device : str, default="auto"
    verbose : int, default=1
        Print progress and the result table.

    Returns
    -------
    results : dict
        ``recall@1``, ``recall@5``, ``knn_accuracy`` and ``seconds``.
    """
    from . import ImageEncoder, ImageRetriever
    from ._device import resolve_device
    from .metrics import retrieval_report

    start = time.perf_counter()
    X_gallery, X_query, y_gallery, y_query = load_digit_split()
    preprocessing = None if image_size is None else {"size": image_size}
    encoding = ImageEncoder(encoder, preprocessing=preprocessing, batch_size=batch_size, device=device)
    retriever = ImageRetriever(encoding, topk=topk, verbose=verbose)
    if verbose:
        print(f"Encoding {len(X_gallery)} gallery digits with {encoder!r} on {resolve_device(device)} ...")
    retriever.fit(X_gallery, y_gallery)
    # One search of the query images (encoded once) gives every metric.
    results = retrieval_report(
        retriever, X_query, y_query, ["recall@1", "recall@5", "accuracy"], output_dict=True
    )
    results = {"recall@1": results["recall@1"], "recall@5": results["recall@5"],
               "knn_accuracy": results["accuracy"], "seconds": time.perf_counter() - start}
    if verbose:
        print(
            f"load_digits: gallery {len(X_gallery)} (train split), queries {len(X_query)} "
            f"(test_size=0.25, stratified, random_state=0), device {retriever.device_}"
        )
        for name, value in results.items():
            print(f"  {name:<13} {value:.4f}" if name != "seconds" else f"  {name:<13} {value:.1f}")
    return results
