"""Random inputs to fit/kneighbors/predict: a result or a documented error, never anything else.

Inputs are mostly valid (so that results are checked) and sometimes broken: NaN/inf,
out-of-range or integer images, a feature count that differs from the gallery's, k beyond
the gallery, empty arrays, booleans.
"""

import warnings

import numpy as np
from helpers import TinyEncoder
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from skretrieval import ImageEncoder, ImageRetriever

DOCUMENTED = (ValueError, TypeError)  # every input error of the public API is one of these
FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))


@st.composite
def _array(draw, shape, unit=False):
    dtype = draw(st.sampled_from([np.float32, np.float64, np.int64, np.uint8, np.bool_]))
    if dtype is np.bool_:
        return draw(hnp.arrays(dtype, shape))
    if np.issubdtype(dtype, np.integer):
        high = 255 if dtype is np.uint8 or (unit and draw(st.booleans())) else 300
        return draw(hnp.arrays(dtype, shape, elements=st.integers(0, high)))
    finite = st.floats(0, 1, width=32) if unit else st.floats(-10, 10, width=32)
    values = draw(hnp.arrays(dtype, shape, elements=finite))
    if values.size and draw(st.integers(0, 4)) == 0:  # now and then a NaN, inf or out-of-range value
        values.flat[draw(st.integers(0, values.size - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf, 7.0]))
    return values


@st.composite
def _case(draw):
    n, d = draw(st.integers(1, 8)), draw(st.integers(1, 5))
    gallery = draw(_array((n, d)))
    d_query = d if draw(st.integers(0, 5)) else draw(st.integers(1, 6))
    queries = draw(_array((draw(st.integers(0 if draw(st.integers(0, 9)) == 0 else 1, 4)), d_query)))
    return gallery, queries


def _check_result(model, X, k):
    distances, indices = model.kneighbors(X, n_neighbors=k)
    assert distances.shape == indices.shape == (len(X), indices.shape[1])
    assert ((indices >= 0) & (indices < len(model.prototype_))).all()
    assert not np.isnan(distances).any() and (np.diff(distances, axis=1) >= -1e-4).all()
    predictions = model.predict(X)
    assert len(predictions) == len(X)
    assert set(np.asarray(predictions).tolist()) <= set(model.classes_.tolist())


def _run(model, gallery, queries, k):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            model.fit(gallery)
        except DOCUMENTED as exc:
            event(f"fit refused: {type(exc).__name__}")
            return
        assert np.isfinite(model.prototype_).all()
        try:
            _check_result(model, queries, k)
            event("answered")
        except DOCUMENTED as exc:
            event(f"query refused: {type(exc).__name__}")


@FUZZ
@given(
    case=_case(),
    topk=st.integers(1, 3),
    k=st.one_of(st.none(), st.none(), st.integers(-2, 10)),
    similarity=st.sampled_from(["cosine", "euclidean", "dot"]),
)
def test_precomputed_fuzz(case, topk, k, similarity):
    gallery, queries = case
    model = ImageRetriever(
        ImageEncoder("precomputed", device="cpu"),
        topk=topk, similarity_fn=similarity,
    )
    _run(model, gallery, queries, k)


ENCODER = TinyEncoder()


@st.composite
def _images(draw, n):
    h, w = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    channels = draw(st.sampled_from([(), (1,), (3,), (4,), (2,)]))
    return draw(_array((n, h, w, *channels), unit=True))


@FUZZ
@given(
    data=st.data(),
    n=st.integers(1, 5),
    n_queries=st.integers(1, 3),
    k=st.sampled_from([-1, 1, 1, 2, 6]),
)
def test_image_fuzz(data, n, n_queries, k):
    gallery, queries = data.draw(_images(n)), data.draw(_images(n_queries))
    model = ImageRetriever(
        ImageEncoder(ENCODER, preprocessing={"size": 4}, device="cpu", batch_size=3),
        topk=1,
    )
    _run(model, gallery, queries, k)
