"""Sharded gallery and distributed encoding on a 2-worker LocalCluster (loopback only)."""

import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

distributed = pytest.importorskip("distributed", reason="needs the dask extra: pip install skretrieval[dask]")

import dask  # noqa: E402
import dask.array as da  # noqa: E402
import dask.bag as db  # noqa: E402
from helpers import TinyEncoder  # noqa: E402
from joblib import parallel_backend  # noqa: E402
from PIL import Image  # noqa: E402
from sklearn.model_selection import GridSearchCV  # noqa: E402

from skretrieval import ImageEncoder, ImageRetriever  # noqa: E402
from skretrieval.dask import ShardedRetriever, encode  # noqa: E402


@pytest.fixture(scope="module")
def client():
    # Without the active memory manager, whose default policy drops extra replicas: as
    # docs/scaling_out.md tells users of replicas > 1.
    with dask.config.set({"distributed.scheduler.active-memory-manager.start": False}), distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
    ) as cluster, distributed.Client(cluster) as client:
        yield client


def test_replicas_warn_where_the_scheduler_drops_them():
    """distributed's default active memory manager drops extra replicas: replicas=2 says so."""
    X, y = _data(12, n=40)
    retriever = ImageRetriever("precomputed")
    with distributed.LocalCluster(  # in-process: no sockets
        n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
    ) as cluster, distributed.Client(cluster) as default_client:
        with pytest.warns(UserWarning, match="ReduceReplicas.*active-memory-manager.start"):
            ShardedRetriever(retriever, replicas=2).fit(X, y, client=default_client)
        default_client.amm.stop()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            ShardedRetriever(retriever, replicas=2).fit(X, y, client=default_client)


def _data(seed=0, n=203, d=8, ties=True):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)).astype(np.float32)
    if ties and n > 150:
        X[100:110] = X[3]  # duplicates across shard boundaries: ties go to the lower index
        X[150] = X[3]
    y = rng.integers(0, 4, size=n)
    return X, y


@pytest.mark.parametrize("similarity_fn", ["cosine", "euclidean", "dot"])
@pytest.mark.parametrize("n_shards", [None, 3])
def test_kneighbors_predict_identical(client, similarity_fn, n_shards):
    X, y = _data()
    Q = np.concatenate([_data(1, n=37)[0], X[[3, 7]]])
    single = ImageRetriever("precomputed", similarity_fn=similarity_fn, topk=7).fit(X, y)
    sharded = ShardedRetriever(single, n_shards=n_shards, query_block=16).fit(X, y, client=client)
    assert len(sharded.shards_) == (n_shards or 2)
    for expected, got in zip(single.kneighbors(Q, 12), sharded.kneighbors(Q, 12)):
        np.testing.assert_array_equal(got, expected)
    for expected, got in zip(single.kneighbors(None, 5), sharded.kneighbors(None, 5)):
        np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(sharded.predict(Q), single.predict(Q))
    assert sharded.score(Q, single.predict(Q)) == 1.0
    np.testing.assert_array_equal(sharded.kneighbors(Q, -1, return_distance=False), single.kneighbors(Q, -1, return_distance=False))


def test_from_retriever_and_partial_fit(client):
    X, y = _data(2)
    X2, y2 = _data(3, n=41)
    y2 = y2 + 2  # new classes too
    Q = _data(4, n=20)[0]
    fitted = ImageRetriever("precomputed", topk=5, vote="similarity").fit(X, y)
    sharded = ShardedRetriever.from_retriever(fitted, client)
    assert fitted.prototype_.shape == X.shape  # not modified
    before = [s.key for s in sharded.shards_]
    where = client.who_has(sharded.shards_)
    sharded.partial_fit(X2, y2)
    assert [s.key for s in sharded.shards_[:2]] == before
    assert client.who_has(sharded.shards_[:2]) == where  # existing shards did not move
    full = ImageRetriever("precomputed", topk=5, vote="similarity").fit(np.vstack([X, X2]), np.r_[y, y2])
    for expected, got in zip(full.kneighbors(Q, 9), sharded.kneighbors(Q, 9)):
        np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(sharded.predict(Q), full.predict(Q))
    np.testing.assert_array_equal(sharded.classes_, full.classes_)


def _image_files(folder, n, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(exist_ok=True)
    paths = []
    for i in range(n):
        colour = np.array([[220, 30, 30], [30, 200, 40], [40, 50, 210]])[i % 3]
        pixels = np.clip(colour + rng.integers(-60, 60, (10, 10, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:03d}.png")
        paths.append(str(folder / f"{i:03d}.png"))
    return paths, np.arange(n) % 3


@pytest.mark.parametrize("head", [None, "arcface"])
def test_images_skipped_queries_and_add_agree(client, tmp_path, head):
    """One core: the sharded retriever answers every query exactly as ImageRetriever does."""
    paths, y = _image_files(tmp_path / "gallery", 30)
    new_paths, new_y = _image_files(tmp_path / "new", 7, seed=1)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    bad = str(tmp_path / "bad.png")
    encoding = ImageEncoder(TinyEncoder(), preprocessing={"size": 8}, device="cpu", on_error="skip")
    params = dict(topk=3, random_state=0)
    if head:
        params.update(head=head, embedding_dim=4, max_epochs=2)
    single = ImageRetriever(encoding, **params).fit(paths, y)
    sharded = ShardedRetriever(ImageRetriever(encoding, **params), n_shards=3).fit(paths, y, client=client)
    single.add([new_paths[0], bad, *new_paths[1:]], [new_y[0], 0, *new_y[1:]])
    sharded.add([new_paths[0], bad, *new_paths[1:]], [new_y[0], 0, *new_y[1:]])
    assert list(sharded.prototype_ids_) == list(single.prototype_ids_) == paths + new_paths
    assert [p for _, p, _ in sharded.skipped_] == [p for _, p, _ in single.skipped_] == [bad]
    queries = [paths[4], bad, new_paths[2], paths[17]]
    for expected, got in zip(single.kneighbors(queries, 5), sharded.kneighbors(queries, 5)):
        np.testing.assert_array_equal(got, expected)
    assert (sharded.kneighbors(queries, 5)[1][1] == -1).all()
    np.testing.assert_array_equal(sharded.predict(queries), single.predict(queries))
    np.testing.assert_array_equal(sharded.predict_proba(queries), single.predict_proba(queries))
    np.testing.assert_array_equal(sharded.transform(queries), single.transform(queries))
    embedded = single.transform(queries)
    np.testing.assert_array_equal(
        sharded.kneighbors(embedded, 5, embedded=True)[1], single.kneighbors(queries, 5)[1]
    )
    for expected, got in zip(single.kneighbors(None, 4), sharded.kneighbors(None, 4)):
        np.testing.assert_array_equal(got, expected)
    radius = float(np.median(single.kneighbors(queries, 5)[0][[0, 2, 3]]))
    for sort in (False, True):
        for expected, got in zip(
            single.radius_neighbors(queries, radius, sort_results=sort),
            sharded.radius_neighbors(queries, radius, sort_results=sort),
        ):
            for e, g in zip(expected, got):
                np.testing.assert_array_equal(g, e)
    assert (sharded.radius_neighbors_graph(None, radius) != single.radius_neighbors_graph(None, radius)).nnz == 0
    assert (sharded.kneighbors_graph(queries, 2, mode="distance") != single.kneighbors_graph(queries, 2, mode="distance")).nnz == 0
    similarity = float(1 - radius)
    assert [g.tolist() for g in sharded.find_duplicates(min_similarity=similarity)] == [
        g.tolist() for g in single.find_duplicates(min_similarity=similarity)
    ]
    matches = sharded.find_duplicates(queries, similarity)  # against the gallery: the same query core
    assert len(matches[0]) and not len(matches[1])  # paths[4] finds itself; bad.png nothing
    for e, g in zip(single.find_duplicates(queries, similarity), matches):
        np.testing.assert_array_equal(g, e)


@pytest.mark.parametrize("threshold", ["auto", 0.75])
def test_open_set_predict_identical(client, threshold):
    X, y = _data(5, ties=False)
    Q = np.concatenate([_data(6, n=40)[0], X[[3, 7]]])
    single = ImageRetriever(
        "precomputed", topk=3, threshold=threshold, false_match_rate=0.3, outlier_label=-1
    ).fit(X, y)
    sharded = ShardedRetriever(single, n_shards=3).fit(X, y, client=client)
    assert sharded.threshold_ == single.threshold_ and sharded.outlier_label_ == -1
    expected = single.predict(Q)
    assert 0 < np.sum(expected == -1) < len(Q)  # some queries rejected, some not
    np.testing.assert_array_equal(sharded.predict(Q), expected)
    groups = [g.tolist() for g in single.find_duplicates(min_similarity="auto")]  # items left out, on the shards too
    assert groups and [g.tolist() for g in sharded.find_duplicates(min_similarity="auto")] == groups
    # partial_fit keeps the threshold, as add does
    X2, y2 = _data(7, n=30)
    single.add(X2, y2)
    sharded.partial_fit(X2, y2)
    assert sharded.threshold_ == single.threshold_
    np.testing.assert_array_equal(sharded.predict(Q), single.predict(Q))


@pytest.mark.parametrize("similarity_fn", ["cosine", "euclidean"])
def test_remove_equals_fit_without_the_items(client, similarity_fn):
    """Shards drop their rows where they are; a shard left empty goes; replicas stay replicated."""
    X, y = _data(10)
    Q = np.concatenate([_data(11, n=25)[0], X[[3, 7]]])
    params = dict(similarity_fn=similarity_fn, topk=5)
    sharded = ShardedRetriever(ImageRetriever("precomputed", **params), n_shards=4, replicas=2).fit(X, y, client=client)
    first, last = sharded.shards_[0].key, sharded.shards_[3]
    where, offsets = client.who_has([last]), sharded.shard_offsets_
    removed = np.r_[np.arange(offsets[1], offsets[3]), [3, 40]]  # shards 1 and 2 whole, 2 rows of 0
    sharded.remove(rows=removed)
    keep = np.setdiff1d(np.arange(len(X)), removed)
    single = ImageRetriever("precomputed", **params).fit(X[keep], y[keep])
    assert len(sharded.shards_) == 2 and sharded.shards_[0].key != first
    # untouched: the same key, still where it was (the scheduler's active memory manager may
    # drop or restore an extra replica meanwhile, so holders are compared as sets)
    assert sharded.shards_[1].key == last.key
    assert set(client.who_has([last])[last.key]) & set(where[last.key])
    assert sharded.shard_offsets_.tolist() == [0, offsets[1] - 2, len(keep)]
    assert all(len(holders) == 2 for holders in client.who_has(sharded.shards_).values())
    for expected, got in zip(single.kneighbors(Q, 9), sharded.kneighbors(Q, 9)):
        np.testing.assert_array_equal(got, expected)
    for expected, got in zip(single.kneighbors(None, 4), sharded.kneighbors(None, 4)):
        np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(sharded.predict(Q), single.predict(Q))
    np.testing.assert_array_equal(sharded.predict_proba(Q), single.predict_proba(Q))
    np.testing.assert_array_equal(sharded.classes_, single.classes_)
    np.testing.assert_array_equal(sharded.prototype_labels_, single.prototype_labels_)
    sharded.add(X[removed[:5]], y[removed[:5]])  # and it grows again as a fitted one does
    single.add(X[removed[:5]], y[removed[:5]])
    np.testing.assert_array_equal(sharded.kneighbors(Q, 9)[1], single.kneighbors(Q, 9)[1])
    with pytest.raises(ValueError, match=r"rows \[500\] are not in the gallery"):
        sharded.remove(rows=[500])


def test_import_skretrieval_does_not_import_dask():
    code = "import sys, skretrieval; assert 'dask' not in sys.modules and 'distributed' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_errors(client):
    X, y = _data(5, n=20)
    sharded = ShardedRetriever(ImageRetriever("precomputed")).fit(X, y, client=client)
    with pytest.raises(ValueError, match="pass the labels"):
        sharded.partial_fit(X)
    with pytest.raises(ValueError, match="holds only 20"):
        sharded.kneighbors(X, 21)
    with pytest.raises(ValueError, match="3 features"):
        sharded.kneighbors(X[:, :3])


def test_encode_list_bag_array(client):
    X, _ = _data(6, n=50, ties=False)
    retriever = ImageRetriever("precomputed").fit(X[:10])
    for given in (list(X), db.from_sequence(list(X), npartitions=3), da.from_array(X, chunks=(16, 4))):
        features = encode(retriever, given, client=client, chunk_size=16)
        assert features.shape == X.shape
        np.testing.assert_array_equal(features.compute(), X)


def test_gridsearch_dask_backend(client):
    X, y = _data(7, n=90, ties=False)
    grid = {"topk": [1, 3], "similarity_fn": ["cosine", "euclidean"]}
    local = GridSearchCV(ImageRetriever("precomputed"), grid, cv=3).fit(X, y)
    with parallel_backend("dask"):
        remote = GridSearchCV(ImageRetriever("precomputed"), grid, cv=3, n_jobs=-1).fit(X, y)
    np.testing.assert_allclose(remote.cv_results_["mean_test_score"], local.cv_results_["mean_test_score"])
    assert remote.best_params_ == local.best_params_


def test_worker_loss(client):
    """Last test: it kills a worker. Without replicas: a clear error; with 2: the same answer."""
    X, y = _data(8)
    Q = _data(9, n=10)[0]
    single = ImageRetriever("precomputed", topk=4).fit(X, y)
    fragile = ShardedRetriever.from_retriever(single, client)
    safe = ShardedRetriever.from_retriever(single, client, replicas=2)
    victim = next(iter(client.who_has(fragile.shards_[0]).values()))[0]
    client.run(os._exit, 1, workers=[victim], on_error="ignore")
    client.wait_for_workers(2, timeout=60)  # the nanny restarts it, empty
    with pytest.raises(RuntimeError, match="lost"):
        fragile.kneighbors(Q)
    for expected, got in zip(single.kneighbors(Q), safe.kneighbors(Q)):
        np.testing.assert_array_equal(got, expected)
