"""A fitted retriever answers queries from many threads at once, as serial calls do."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from helpers import TinyEncoder

from skretrieval import ImageEncoder, ImageRetriever

N_THREADS, N_QUERIES = 8, 50


@pytest.mark.parametrize("kind", ["features", "images"])
def test_threads_give_serial_results(kind):
    rng = np.random.default_rng(0)
    if kind == "features":
        gallery, queries = rng.normal(size=(300, 16)), rng.normal(size=(N_QUERIES, 5, 16))
        model = ImageRetriever(
            ImageEncoder("precomputed", device="cpu"),
            topk=5, working_memory=0.01,
        )
    else:
        gallery = rng.random((40, 8, 8, 3)).astype(np.float32)
        queries = rng.random((N_QUERIES, 2, 8, 8, 3)).astype(np.float32)
        model = ImageRetriever(
            ImageEncoder(TinyEncoder(), preprocessing="none", device="cpu"),
            topk=3,
        )
    model.fit(gallery, rng.integers(0, 6, len(gallery)))

    def answer(q):
        distances, indices = model.kneighbors(q)
        return distances, indices, model.predict(q), model.predict_proba(q)

    serial = [answer(q) for q in queries]
    model.__dict__.pop("_search_cache", None)  # threads race to build it too
    with ThreadPoolExecutor(N_THREADS) as pool:
        for _ in range(2 if kind == "features" else 1):
            futures = [pool.submit(answer, q) for _ in range(N_THREADS) for q in queries]
            results = [f.result() for f in futures]
            for i, result in enumerate(results):
                for got, expected in zip(result, serial[i % N_QUERIES]):
                    np.testing.assert_array_equal(got, expected)
