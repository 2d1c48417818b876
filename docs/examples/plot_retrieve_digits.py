"""
Retrieve with the default encoder
=================================

Fit :class:`~skretrieval.ImageRetriever` with its default encoder (EfficientNet-Lite0 with
ImageNet weights, packaged, so this runs offline) on a few hundred of scikit-learn's
handwritten digits, look at what it retrieves for some held-out digits, and compare the
Recall@k of two similarities.
"""

# %%
# The data: 8x8 digits as images in [0, 1]
# -----------------------------------------
# ``load_digits`` images hold values 0..16; images must be floats in [0, 1] (or integers in
# [0, 255]), so divide by 16. A numpy array ``(N, H, W)`` is read as grayscale images.
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

digits = load_digits()
X_gallery, X_query, y_gallery, y_query = train_test_split(
    digits.images / 16.0, digits.target, train_size=400, test_size=100,
    stratify=digits.target, random_state=0,
)

# %%
# Fit the retriever
# -----------------
# The encoder's own preprocessing resizes to 224 pixels; 64 pixels is plenty for 8x8 digits
# and much faster on a CPU.
from skretrieval import ImageEncoder, ImageRetriever

retriever = ImageRetriever(ImageEncoder(preprocessing={"size": 64}, device="cpu"), topk=5)
retriever.fit(X_gallery, y_gallery)
print(f"gallery: {retriever.prototype_.shape[0]} digits, {retriever.prototype_.shape[1]}-d features")

# %%
# Queries are encoded as the gallery was; encode them once and pass the features wherever
# queries are expected (a 2-D array is read as features).
query_features = retriever.transform(X_query)
print(f"kNN accuracy on the queries: {retriever.score(query_features, y_query):.3f}")

# %%
# What does it retrieve?
# ----------------------
# One row per query: the query, then its five most similar gallery digits with their cosine
# similarity, framed in green when the digit matches the query's label, in red otherwise.
from skretrieval.plotting import RetrievalDisplay

display = RetrievalDisplay.from_estimator(retriever, X_query[:4], y_query[:4], topk=5)

# %%
# Recall@k of two similarities
# ----------------------------
# Recall@k is the share of queries with a relevant (same label) digit among their k best
# matches. The euclidean retriever searches the same gallery features
# (``encoder="precomputed"``), so nothing is encoded again.
from skretrieval.metrics import retrieval_report
from skretrieval.plotting import RecallAtKDisplay

euclidean = ImageRetriever("precomputed", similarity_fn="euclidean")
euclidean.fit(retriever.prototype_, y_gallery)
curves = RecallAtKDisplay.from_estimator(
    {"cosine": retriever, "euclidean": euclidean}, query_features, y_query, ks=range(1, 11)
)
print(retrieval_report(retriever, query_features, y_query, ["recall@1", "recall@5", "map@10"]))

# sphinx_gallery_start_ignore
# ruff: noqa: E402  (imports sit next to the step that needs them)
# sphinx_gallery_end_ignore
