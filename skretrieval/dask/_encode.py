"""Encode images across the workers of a Dask cluster, the encoder sent once per worker."""

from __future__ import annotations

import copy

import numpy as np
from sklearn.utils.validation import check_is_fitted


def _encode_block(block, model):
    block = list(block) if not isinstance(block, np.ndarray) else block
    if len(block) and all(isinstance(item, np.ndarray) for item in block):
        block = np.stack(block)  # images (or feature rows) of a bag or a list
    return np.asarray(model.transform(block), np.float32)


def _count(partition):
    return [len(partition)]


def encode(estimator, X, *, client=None, chunk_size: int = 256):
    """Features of ``X`` computed on the workers, as a dask array aligned with ``X``.

    The fitted ``estimator`` (without its gallery features) is broadcast to every worker
    once; each task encodes one chunk of ``X`` with ``estimator.transform``.

    Parameters
    ----------
    estimator : ImageRetriever or ImageEncoder
        Fitted.
    X : list of paths or images, dask.bag.Bag or dask.array.Array
        The images. A list is split into chunks of ``chunk_size``; a bag keeps its
        partitions; an array of shape (n, H, W[, C]) keeps its chunks along the first axis.
    client : distributed.Client, default=None
        The cluster; the current client when None.
    chunk_size : int, default=256
        Items per task for a list.

    Returns
    -------
    features : dask.array.Array of shape (n, n_features), float32
        Lazy: ``.compute()`` gathers it, ``.persist()`` keeps it on the workers (e.g. to
        build a :class:`ShardedRetriever` gallery). Row ``i`` is the features of ``X[i]``.

    Examples
    --------
    >>> import numpy as np
    >>> from distributed import Client, LocalCluster
    >>> from skretrieval import ImageRetriever
    >>> from skretrieval.dask import encode
    >>> retriever = ImageRetriever("precomputed").fit(np.eye(3))
    >>> with LocalCluster(n_workers=1, processes=False,
    ...                   dashboard_address=None) as cluster, Client(cluster) as client:
    ...     features = encode(retriever, np.eye(3)[::-1], client=client, chunk_size=2)
    ...     print(features.compute())
    [[0. 0. 1.]
     [0. 1. 0.]
     [1. 0. 0.]]
    """
    import dask
    import dask.array as da
    import dask.bag as db
    from distributed import default_client

    check_is_fitted(estimator)
    client = client if client is not None else default_client()
    shell = estimator
    width = np.nan
    if hasattr(estimator, "prototype_"):  # the gallery is not needed to encode
        width = estimator.prototype_.shape[1]
        shell = copy.copy(estimator)
        shell.prototype_ = np.empty((0, width), dtype=np.float32)
    model = client.scatter(shell, broadcast=True, hash=False)

    if isinstance(X, da.Array):
        X = X.rechunk({axis: -1 for axis in range(1, X.ndim)})
        return da.map_blocks(
            _encode_block, X, model, dtype=np.float32,
            drop_axis=list(range(2, X.ndim)), chunks=(X.chunks[0], (width,)),
        )
    if isinstance(X, db.Bag):
        lengths = X.map_partitions(_count).compute()
    else:
        items = list(X)
        lengths = [len(items[i : i + chunk_size]) for i in range(0, len(items), chunk_size)]
        X = db.from_sequence(items, partition_size=chunk_size)
    blocks = [
        da.from_delayed(dask.delayed(_encode_block)(part, model), (n, width), dtype=np.float32)
        for part, n in zip(X.to_delayed(), lengths)
    ]
    return da.concatenate(blocks, axis=0)
