"""
Tune a retriever with GridSearchCV
==================================

:class:`~skretrieval.ImageRetriever` is a scikit-learn estimator, so
:class:`~sklearn.model_selection.GridSearchCV` can choose its similarity and the size and
weighting of its kNN vote. Two things make that practical with an image encoder: a feature
cache (``memory=``), so every image is encoded once however many candidates and folds the
search fits, and retrieval scorers from :func:`skretrieval.metrics.get_scorer`, so the
search can rank candidates by a retrieval metric rather than only by kNN accuracy.
"""

# %%
# The data
# --------
# 600 of scikit-learn's 8x8 digits, as images in [0, 1]. Each fold's training part becomes
# the gallery and its held-out part the queries.
from sklearn.datasets import load_digits

digits = load_digits()
X, y = digits.images[:600] / 16.0, digits.target[:600]

# %%
# The search
# ----------
# The grid crosses three parameters:
#
# * ``similarity_fn`` changes the ranking itself, so it moves every metric;
# * ``topk`` (how many of the best matches vote) and ``vote`` (equal votes, or votes
#   weighted by similarity) only change what :meth:`~skretrieval.ImageRetriever.predict`
#   answers, so they move kNN accuracy and leave the retrieval metrics alone.
#
# Hence three scores per candidate: Recall@1 and MAP@R (mean average precision over the
# first R matches, R being the number of gallery digits of the query's class) from
# ``get_scorer``, and kNN accuracy (the ``"accuracy"`` scorer compares ``predict`` with the
# labels, as the estimator's own ``score`` does). ``refit`` names the score that picks the best
# candidate, which is then refitted on all of ``X``.
#
# With ``memory=``, the first fold's fit and score encode the 600 digits; every other fit
# and score (48 of each in all) and the final refit read the cached features. 64-pixel inputs keep the
# encoding itself short.
import tempfile
import time

from sklearn.model_selection import GridSearchCV, StratifiedKFold

from skretrieval import ImageEncoder, ImageRetriever
from skretrieval.metrics import get_scorer

cache = tempfile.TemporaryDirectory()
retriever = ImageRetriever(
    ImageEncoder(preprocessing={"size": 64}, device="cpu", batch_size=64, memory=cache.name),
)
grid = {
    "similarity_fn": ["cosine", "euclidean"],
    "topk": [1, 3, 5, 10],
    "vote": ["uniform", "similarity"],
}
scoring = {"recall@1": get_scorer("recall@1"), "mapr": get_scorer("mapr"), "accuracy": "accuracy"}
search = GridSearchCV(
    retriever, grid, scoring=scoring, refit="accuracy",
    cv=StratifiedKFold(n_splits=3, shuffle=True, random_state=0),
)
start = time.perf_counter()
search.fit(X, y)
print(f"{len(search.cv_results_['params'])} candidates x 3 folds in {time.perf_counter() - start:.1f} s")

# %%
# The results
# -----------
# ``cv_results_`` is a dict of arrays with one entry per candidate: its parameters, and the
# mean and standard deviation over the folds of each score. A small table, best accuracy
# first:
import numpy as np

results = search.cv_results_
print(f"{'similarity':<10} {'topk':>4} {'vote':<10} {'Recall@1':>8} {'MAP@R':>6} {'accuracy':>8} {'std':>6}")
for i in np.argsort(results["rank_test_accuracy"], kind="stable"):
    params = results["params"][i]
    print(
        f"{params['similarity_fn']:<10} {params['topk']:>4} {params['vote']:<10} "
        f"{results['mean_test_recall@1'][i]:>8.3f} {results['mean_test_mapr'][i]:>6.3f} "
        f"{results['mean_test_accuracy'][i]:>8.3f} {results['std_test_accuracy'][i]:>6.3f}"
    )

# %%
# As expected, Recall@1 and MAP@R take one value per similarity whatever ``topk`` and
# ``vote``; accuracy varies with all three. With ``topk=1``, accuracy equals Recall@1 (the
# best match alone decides the label). The euclidean rows do not depend on ``vote``
# either: its similarity is the negative distance, so the similarity weights
# ``max(s, 0)`` are all 0 and the vote falls back to uniform. On 600 digits most
# differences are within one standard deviation across the folds: read the ranking as a
# hint, not a verdict.
print(f"best parameters: {search.best_params_}")
print(f"best cross-validated accuracy: {search.best_score_:.3f}")

# %%
# The refitted best retriever is ready to use; its gallery is all 600 digits.
best = search.best_estimator_
print(f"gallery of the best retriever: {best.prototype_.shape[0]} digits")

# %%
# Accuracy by ``topk``
# --------------------
# One line per similarity and vote shows how the vote size trades the single best match
# against the majority of a wider neighbourhood.
import matplotlib.pyplot as plt

fig, ax = plt.subplots(figsize=(5, 3.5))
for similarity in grid["similarity_fn"]:
    for vote in grid["vote"]:
        rows = [
            i for i, params in enumerate(results["params"])
            if params["similarity_fn"] == similarity and params["vote"] == vote
        ]
        topk = [results["params"][i]["topk"] for i in rows]
        ax.plot(topk, results["mean_test_accuracy"][rows], marker="o", label=f"{similarity}, {vote}")
ax.set_xlabel("topk (neighbours that vote)")
ax.set_ylabel("cross-validated kNN accuracy")
ax.legend()
fig.tight_layout()

cache.cleanup()

# sphinx_gallery_start_ignore
# ruff: noqa: E402  (imports sit next to the step that needs them)
# sphinx_gallery_end_ignore
