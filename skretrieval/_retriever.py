"""ImageRetriever: encode a gallery, find the most similar images, vote on labels."""

from __future__ import annotations

import os
from numbers import Integral, Real
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, column_or_1d

from ._encoder import ENCODER_CONSTRAINTS, EncoderMixin, with_encoding_options
from ._sklearn_compat import Interval, Options, StrOptions, TransformerTags, _fit_context
from ._vote import class_probabilities, plurality_vote, vote_weights
from .io import to_unit_float
from .io._inputs import _item_tensor
from .search import (
    PRECISIONS,
    SIMILARITY_NAMES,
    SearchGallery,
    get_similarity,
    radius_search,
    resolve_precision,
    topk_search,
)
from .training import TRAINING_CONSTRAINTS, FineTuneMixin


@with_encoding_options
class ImageRetriever(FineTuneMixin, EncoderMixin, ClassifierMixin, BaseEstimator):
    """Image-to-image retrieval: a gallery of encoded images searched by similarity.

    ``fit`` encodes the gallery (the "prototype"); ``kneighbors``/``search`` return the most
    similar gallery items of each query; ``predict`` votes over the labels of the ``topk``
    best matches, as :class:`~sklearn.neighbors.KNeighborsClassifier` does.

    Parameters
    ----------
    encoder : str, nn.Module or callable, default="efficientnet_lite0"
        A name from :func:`skretrieval.encoders.list_encoders` (the default EfficientNet-Lite0
        works offline with ImageNet weights; any torchvision model name works), a
        ``torch.nn.Module`` or callable mapping an ``(N, C, H, W)`` batch to ``(N, D)``
        features, or ``"precomputed"`` when ``X`` already is features. A module is
        deep-copied into ``encoder_``; yours is never modified.
    weights : str, path or None, default="DEFAULT"
        For a named encoder: ``"DEFAULT"``, a torchvision weights name such as
        ``"IMAGENET1K_V2"``, ``None`` (random initialisation) or a path to a state dict. For a
        module: an optional state-dict path loaded into the copy.
    preprocessing : None, "none", dict, Preprocessing or callable, default=None
        How images in [0, 1] become encoder input. ``None`` takes the encoder's own; a dict
        overrides some :class:`Preprocessing` fields (``size``, ``crop_pct``,
        ``resize_mode``, ``mean``, ``std``, ``interpolation``); a callable receives a float
        batch ``(N, 3, H, W)``; ``"none"`` passes images through unchanged.
    similarity_fn : {"cosine", "dot", "euclidean"} or callable, default="cosine"
        Larger = more similar. ``"cosine_similarity"`` is accepted as an alias of
        ``"cosine"``. A callable receives two float32 tensors ``(n, d)``, ``(m, d)`` and
        returns ``(n, m)`` similarities. Distances reported by :meth:`kneighbors` are
        ``1 - s`` (cosine), ``||a - b||`` (euclidean), ``-a.b`` (dot) and ``-s`` (callable).
    topk : int, default=5
        Neighbours that vote in :meth:`predict`, and the default ``n_neighbors``. ``-1`` means
        the whole gallery (``n_gallery - 1`` when querying the gallery itself). A value
        larger than the gallery raises a ``ValueError`` at query time.
    vote : {"uniform", "similarity"} or callable, default="uniform"
        Weight of each neighbour's vote: 1, ``max(s, 0)`` (uniform when all are 0), or
        ``vote(similarities) -> weights`` of shape ``(n_queries, k)``. A tie goes to the class
        of the best-ranked neighbour among the tied ones.
    batch_size : int, default=32
        Images encoded per forward pass.
    device : str or torch.device, default="auto"
        ``"auto"`` picks CUDA, then MPS, then the CPU; encoding and search run there.
    memory : str, path or joblib.Memory, default=None
        A directory caching each image's features, keyed by the image's content and a
        fingerprint of the encoder (class, weights, preprocessing): GridSearchCV folds and
        candidates, clones, re-fits and other processes reuse them instead of encoding again,
        and an interrupted fit resumes where it stopped. None disables caching.
    cache_key : str, default=None
        Fingerprint of a plain callable encoder, which has no weights to hash; without it such
        an encoder is not cached. Change it whenever the callable's output changes.
    on_error : {"raise", "skip", "warn"}, default="raise"
        What an image file that cannot be decoded (truncated, empty, not an image, beyond
        PIL's decompression-bomb limit) does: ``"raise"`` a ``ValueError`` naming the file and
        the reason; ``"skip"`` leave it out (``"warn"``: and warn). In ``fit`` the bad files
        are listed in ``skipped_`` and everything else (``y``, ``prototype_ids_``) stays
        aligned. At query time rows stay aligned with ``X``: a bad query's ``transform`` row
        is all NaN, its ``kneighbors`` indices ``-1`` and distances ``inf`` (``search``:
        similarities ``-inf``), its ``predict`` value ``None`` (the result then has dtype
        object) and its ``predict_proba`` row NaN.
    {encoding_options}
    working_memory : float, default=None
        MiB that one block of similarity scores may take during search; scikit-learn's
        ``working_memory`` setting when None.
    search_precision : {"auto", "fp32", "bf16", "fp16"}, default="auto"
        Dtype of the similarity matrix products. Results are the float32 results in every
        mode: bf16/fp16 products only select candidates within a bound of their rounding
        error, which are re-scored in float32. ``"auto"`` uses bf16 on CUDA and on CPUs with
        bf16 matrix units (AMX-BF16, AVX512-BF16), fp32 otherwise; ``"fp16"`` needs a GPU.
        A callable ``similarity_fn`` always runs in fp32.
    head : {"linear", "arcface", "triplet", "supcon"}, nn.Module or None, default=None
        Fine-tune in ``fit`` (needs ``y`` with at least 2 classes). A projection maps encoder
        features to an embedding trained with this loss; retrieval, ``transform`` and
        ``prototype_`` then use the embedding, never classifier logits. ``"linear"``: softmax
        cross-entropy of a linear classifier; ``"arcface"``: additive angular margin
        (options ``margin``, ``scale``, ``subcenters``); ``"triplet"``: batch-hard triplet
        (``margin``); ``"supcon"``: supervised contrastive (``temperature``). A module or
        callable ``head(embeddings, labels) -> loss`` (labels are class codes) is used as
        given (copied). None: no training, the encoder's features are the embedding.
    head_params : dict, default=None
        Options of a named head, e.g. ``{"margin": 0.5, "scale": 30, "subcenters": 1}``
        (see :mod:`skretrieval.losses`); grid-search it as a list of dicts.
    embedding_dim : int, default=None
        Width of the learned embedding; None keeps the encoder's (the projection then
        starts as the identity).
    fine_tune : {"head", "all"}, default="head"
        ``"head"``: the encoder stays frozen; the gallery is encoded once and the projection
        and head train on those cached features. ``"all"``: the encoder trains too (at
        ``lr * backbone_lr_scale``; BatchNorm layers keep their running statistics while
        their affine weights train), images are re-encoded every epoch with
        ``train_transform``; they are held decoded in memory during ``fit``.
    batch_augments : {"mixup", "cutmix"}, list, dict or None, default=None
        Mix pairs of training samples; one augment of a list is drawn per batch; a dict maps
        names to the Beta ``alpha`` (defaults 0.8 for Mixup, 1.0 for CutMix). Labels are mixed
        as ``lam * loss(y) + (1 - lam) * loss(y_b)``, which ``"linear"`` and ``"arcface"``
        support (pair-based heads raise). With ``fine_tune="head"`` Mixup mixes features;
        CutMix needs ``fine_tune="all"``.
    train_transform : "crop", callable or None, default="crop"
        Train-time image augmentation with ``fine_tune="all"``: ``"crop"`` is a random resized
        crop (area 60-100%) of the preprocessed image; a callable gets ``(batch, rng)``.
    max_epochs : int, default=10
        Training epochs (fewer when early stopping).
    lr : float, default=1e-3
        AdamW learning rate of the projection and head.
    weight_decay : float, default=1e-4
        AdamW weight decay.
    lr_schedule : {"cosine", "constant"}, default="cosine"
        Learning-rate decay per step after a linear warm-up.
    warmup_epochs : float, default=1.0
        Length of the warm-up.
    backbone_lr_scale : float, default=0.1
        With ``fine_tune="all"``, the encoder learns at ``lr * backbone_lr_scale``.
    early_stopping : bool, default=False
        Hold out ``validation_fraction`` of the gallery (stratified), score Recall@1 of those
        items against the rest after every epoch, stop after ``n_iter_no_change`` epochs
        without an improvement of ``tol``, and keep the best epoch's weights.
    validation_fraction : float, default=0.1
        Held-out share for early stopping.
    n_iter_no_change : int, default=5
        Epochs without improvement before stopping.
    tol : float, default=1e-4
        Minimum Recall@1 improvement.
    random_state : int, RandomState or None, default=None
        Seeds initialisation, shuffling, splits and augments; an int gives bit-identical
        embeddings on the CPU.
    warm_start : bool, default=False
        A second ``fit`` continues training the previous projection, head (and encoder).
    verbose : int, default=0
        When > 0, show progress bars (images/s, on stderr) while encoding and training,
        and print the loss (and validation score) of every training epoch.

    Attributes
    ----------
    prototype_ : ndarray of shape (n_gallery, n_features), float32
        The encoded gallery.
    prototype_labels_ : ndarray of shape (n_gallery,)
        Label of each gallery item: ``y``, the labels a Dataset yields, or ``arange(n)``.
    prototype_ids_ : ndarray of shape (n_gallery,)
        File path of each gallery item when it came from files, else ``arange(n)``.
    skipped_ : list of tuple
        ``(index in X, path, reason)`` of each image file ``fit`` left out
        (``on_error="skip"``/``"warn"``); empty otherwise.
    classes_ : ndarray of shape (n_classes,)
        Sorted distinct labels. Fitted without ``y``, every gallery item is its own class,
        so ``predict`` returns gallery indices and ``predict_proba`` is
        ``(n_queries, n_gallery)``.
    encoder_ : nn.Module, callable or None
        The encoder used (a copy of a given module); None for ``"precomputed"``.
    preprocessing_ : callable or None
        The resolved preprocessing.
    device_ : torch.device
        Where encoding and search run.
    n_features_in_ : int
        Feature count, when ``fit`` was given features.
    projection_ : nn.Module or None
        The trained projection (on the CPU); None without a head.
    head_ : nn.Module or callable
        The trained loss head (with a head).
    loss_curve_ : list of float
        Mean training loss per epoch (with a head).
    validation_scores_ : list of float or None
        Validation Recall@1 per epoch with early stopping, else None.
    best_validation_score_ : float or None
        Best of ``validation_scores_``.
    n_iter_ : int
        Epochs trained (with a head).
    history_ : History
        One dict per epoch: ``epoch``, ``loss``, ``lr``, ``dur`` (and ``valid_score``).

    Examples
    --------
    >>> import numpy as np
    >>> from skretrieval import ImageRetriever
    >>> gallery = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    >>> retriever = ImageRetriever(encoder="precomputed", topk=1).fit(gallery, ["a", "a", "b"])
    >>> retriever.predict([[0.1, 0.9]])
    array(['b'], dtype='<U1')
    >>> distances, indices = retriever.kneighbors([[1.0, 0.05]], n_neighbors=2)
    >>> indices
    array([[0, 1]])
    """

    _parameter_constraints = {
        **ENCODER_CONSTRAINTS,
        "similarity_fn": [StrOptions(set(SIMILARITY_NAMES)), callable],
        "topk": [Interval(Integral, 1, None, closed="left"), Options(Integral, {-1})],
        "vote": [StrOptions({"uniform", "similarity"}), callable],
        "working_memory": [None, Interval(Real, 0, None, closed="neither")],
        "search_precision": [StrOptions(set(PRECISIONS))],
        **TRAINING_CONSTRAINTS,
    }

    def __init__(
        self,
        encoder="efficientnet_lite0",
        *,
        weights="DEFAULT",
        preprocessing=None,
        similarity_fn="cosine",
        topk=5,
        vote="uniform",
        batch_size=32,
        device="auto",
        memory=None,
        cache_key=None,
        on_error="raise",
        n_jobs=None,
        encode_precision="fp32",
        compile="auto",
        working_memory=None,
        search_precision="auto",
        head=None,
        head_params=None,
        embedding_dim=None,
        fine_tune="head",
        batch_augments=None,
        train_transform="crop",
        max_epochs=10,
        lr=1e-3,
        weight_decay=1e-4,
        lr_schedule="cosine",
        warmup_epochs=1.0,
        backbone_lr_scale=0.1,
        early_stopping=False,
        validation_fraction=0.1,
        n_iter_no_change=5,
        tol=1e-4,
        random_state=None,
        warm_start=False,
        verbose=0,
    ):
        self.encoder = encoder
        self.weights = weights
        self.preprocessing = preprocessing
        self.similarity_fn = similarity_fn
        self.topk = topk
        self.vote = vote
        self.batch_size = batch_size
        self.device = device
        self.memory = memory
        self.cache_key = cache_key
        self.on_error = on_error
        self.n_jobs = n_jobs
        self.encode_precision = encode_precision
        self.compile = compile
        self.working_memory = working_memory
        self.search_precision = search_precision
        self.head = head
        self.head_params = head_params
        self.embedding_dim = embedding_dim
        self.fine_tune = fine_tune
        self.batch_augments = batch_augments
        self.train_transform = train_transform
        self.max_epochs = max_epochs
        self.lr = lr
        self.weight_decay = weight_decay
        self.lr_schedule = lr_schedule
        self.warmup_epochs = warmup_epochs
        self.backbone_lr_scale = backbone_lr_scale
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.tol = tol
        self.random_state = random_state
        self.warm_start = warm_start
        self.verbose = verbose

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Encode the gallery ("prototype") and remember its labels.

        Parameters
        ----------
        X : images or features
            The gallery: a 2-D feature matrix (encoding skipped), numpy images
            ``(N, H, W[, C])`` channels last, a torch tensor ``(N, C, H, W)``, a path to an
            image, a directory or a ``dump_prototype`` file, a list of paths or PIL images,
            or a torch ``Dataset``/``DataLoader``. Float images lie in [0, 1], integer images
            in [0, 255].
        y : array-like of shape (n_gallery,), default=None
            Gallery labels. Without it, the labels a Dataset or prototype file carries are
            used, else every item is its own label (``arange(n)``).

        Returns
        -------
        self : ImageRetriever
        """
        warm = self._check_training()
        if not warm:
            self._fit_encoder()
        if self.head is not None and self.fine_tune == "all":
            self._fit_embedding_images(X, y, warm)  # trains encoder_ and projection_
        # A head trains on float32 features from the eager encoder, whatever the settings
        # (fit's promise of reproducible training); queries may run faster.
        features, labels, ids = self._encode_input(X, reset=True, exact=self.head is not None)
        n = len(features)
        if y is not None:
            labels = column_or_1d(y, warn=True)
            if self.skipped_ and len(labels) == n + len(self.skipped_):
                labels = np.delete(labels, [index for index, _, _ in self.skipped_])
            if len(labels) != n:
                raise ValueError(f"X has {n} samples but y has {len(labels)}; they must match.")
            check_classification_targets(labels)
        self._fit_embedding(features, labels, warm)  # fine_tune="head": projection_ on cached features
        if labels is None:
            labels = np.arange(n)
        self.prototype_ = self._embed(features)
        self.prototype_labels_ = np.asarray(labels)
        self.prototype_ids_ = np.asarray(ids) if ids is not None else np.arange(n)
        self.classes_, self._label_codes = np.unique(self.prototype_labels_, return_inverse=True)
        self._search_cache = _SearchCache()  # filled by the first query
        # Where each gallery image came from, by reference (paths are in prototype_ids_).
        self._gallery_source = X.dataset if isinstance(X, torch.utils.data.DataLoader) else X
        return self

    def fit_transform(self, X, y=None):
        """Fit, then return the gallery features (``prototype_``) without encoding twice.

        Parameters
        ----------
        X : images or features
            The gallery.
        y : array-like of shape (n_gallery,), default=None
            Gallery labels.

        Returns
        -------
        features : ndarray of shape (n_gallery, n_features), float32
        """
        return self.fit(X, y).prototype_.copy()

    def transform(self, X):
        """Feature vectors of ``X``, as the gallery was encoded.

        Parameters
        ----------
        X : images or features
            Any input :meth:`fit` accepts.

        Returns
        -------
        features : ndarray of shape (n_samples, n_features), float32
        """
        check_is_fitted(self)
        return self._query_features(X)

    def search(self, X=None, k=None):
        """The ``k`` most similar gallery items per query: similarities, best first.

        The similarity view of :meth:`kneighbors` (the origin's ``matching``): larger means
        more similar, sorted descending; ties go to the lower gallery index.

        Parameters
        ----------
        X : images or features, default=None
            Queries; None queries the gallery against itself, excluding each item itself.
        k : int, default=None
            Items per query; ``topk`` when None, ``-1`` for all.

        Returns
        -------
        similarities : ndarray of shape (n_queries, k), float32
        indices : ndarray of shape (n_queries, k), int64
            Rows of ``prototype_``; ``prototype_ids_[indices]`` names the items.

        Examples
        --------
        >>> import numpy as np
        >>> from skretrieval import ImageRetriever
        >>> retriever = ImageRetriever("precomputed").fit(np.eye(3))
        >>> similarities, indices = retriever.search([[0.0, 1.0, 0.0]], k=2)
        >>> similarities.round(3), indices
        (array([[1., 0.]], dtype=float32), array([[1, 0]]))
        """
        check_is_fitted(self)
        queries = None if X is None else self._query_features(X)
        return self._search(queries, k)

    def kneighbors(self, X=None, n_neighbors=None, return_distance=True):
        """Nearest gallery items of each query, as ``NearestNeighbors.kneighbors``.

        Parameters
        ----------
        X : images or features, default=None
            Queries; None queries the gallery against itself, and no item is its own
            neighbour.
        n_neighbors : int, default=None
            Neighbours per query; ``topk`` when None, ``-1`` for all.
        return_distance : bool, default=True
            Whether to return the distances too.

        Returns
        -------
        neigh_dist : ndarray of shape (n_queries, n_neighbors), float32
            Ascending distances: ``1 - cos`` (cosine), ``||a - b||`` (euclidean), ``-a.b``
            (dot), ``-s`` (callable). Only when ``return_distance=True``.
        neigh_ind : ndarray of shape (n_queries, n_neighbors), int64
            Rows of ``prototype_``.

        Examples
        --------
        >>> import numpy as np
        >>> from skretrieval import ImageRetriever
        >>> retriever = ImageRetriever("precomputed", similarity_fn="euclidean").fit([[0.0], [1.0], [3.0]])
        >>> retriever.kneighbors(n_neighbors=1)
        (array([[1.],
               [1.],
               [2.]], dtype=float32), array([[1],
               [0],
               [1]]))
        """
        similarities, indices = self.search(X, n_neighbors)
        if not return_distance:
            return indices
        return get_similarity(self.similarity_fn).to_distance(similarities), indices

    def radius_neighbors(self, X=None, radius=None, return_distance=True, sort_results=False):
        """Gallery items within a distance of each query, as ``NearestNeighbors.radius_neighbors``.

        Parameters
        ----------
        X : images or features, default=None
            Queries; None queries the gallery against itself, and no item is its own
            neighbour.
        radius : float
            Largest distance returned, as :meth:`kneighbors` defines distances (``1 - cos``
            for cosine, ``||a - b||`` for euclidean, ``-a.b`` for dot, ``-s`` for a callable).
        return_distance : bool, default=True
            Whether to return the distances too.
        sort_results : bool, default=False
            Sort each query's neighbours by distance (ties by index); otherwise by index.

        Returns
        -------
        neigh_dist : ndarray of shape (n_queries,), dtype=object
            One float32 array of distances per query. Only when ``return_distance=True``.
        neigh_ind : ndarray of shape (n_queries,), dtype=object
            One int64 array of ``prototype_`` rows per query.

        Examples
        --------
        >>> import numpy as np
        >>> from skretrieval import ImageRetriever
        >>> retriever = ImageRetriever("precomputed", similarity_fn="euclidean").fit([[0.0], [1.0], [3.0]])
        >>> retriever.radius_neighbors([[0.5]], radius=1.0, return_distance=False)[0]
        array([0, 1])
        """
        check_is_fitted(self)
        if radius is None:
            raise ValueError("radius_neighbors needs a radius (a distance, as kneighbors returns).")
        queries = None if X is None else self._query_features(X)
        distances, indices = radius_search(
            self.prototype_ if queries is None else queries,
            self._search_gallery(),
            float(radius),
            get_similarity(self.similarity_fn),
            exclude_self=queries is None,
            sort_results=sort_results,
            working_memory=self.working_memory,
        )
        return (distances, indices) if return_distance else indices

    def kneighbors_graph(self, X=None, n_neighbors=None, mode="connectivity"):
        """Sparse graph of each query's nearest gallery items, as ``NearestNeighbors``.

        Parameters
        ----------
        X : images or features, default=None
            Queries; None: the gallery against itself, without self-loops.
        n_neighbors : int, default=None
            Neighbours per query; ``topk`` when None.
        mode : {"connectivity", "distance"}, default="connectivity"
            Ones, or the distances of :meth:`kneighbors`.

        Returns
        -------
        graph : sparse matrix of shape (n_queries, n_gallery), CSR

        Examples
        --------
        >>> import numpy as np
        >>> from skretrieval import ImageRetriever
        >>> retriever = ImageRetriever("precomputed", similarity_fn="euclidean").fit([[0.0], [1.0], [3.0]])
        >>> retriever.kneighbors_graph(n_neighbors=1).toarray()
        array([[0., 1., 0.],
               [1., 0., 0.],
               [0., 1., 0.]])
        """
        _check_graph_mode(mode)
        distances, indices = self.kneighbors(X, n_neighbors)
        n_queries, k = indices.shape
        data = np.ones(indices.size) if mode == "connectivity" else distances.ravel()
        indptr = np.arange(0, n_queries * k + 1, k)
        return sp.csr_matrix((data, indices.ravel(), indptr), shape=(n_queries, len(self.prototype_)))

    def radius_neighbors_graph(self, X=None, radius=None, mode="connectivity", sort_results=False):
        """Sparse graph of the gallery items within ``radius`` of each query.

        Parameters
        ----------
        X : images or features, default=None
            Queries; None: the gallery against itself, without self-loops.
        radius : float
            Largest distance, as in :meth:`radius_neighbors`.
        mode : {"connectivity", "distance"}, default="connectivity"
            Ones, or the distances.
        sort_results : bool, default=False
            Store each row's entries by increasing distance (``mode="distance"`` only).

        Returns
        -------
        graph : sparse matrix of shape (n_queries, n_gallery), CSR

        Examples
        --------
        >>> import numpy as np
        >>> from skretrieval import ImageRetriever
        >>> retriever = ImageRetriever("precomputed", similarity_fn="euclidean").fit([[0.0], [1.0], [3.0]])
        >>> retriever.radius_neighbors_graph(radius=1.5).toarray()
        array([[0., 1., 0.],
               [1., 0., 0.],
               [0., 0., 0.]])
        """
        _check_graph_mode(mode)
        if sort_results and mode != "distance":
            raise ValueError("sort_results=True needs mode='distance', as in scikit-learn.")
        distances, indices = self.radius_neighbors(X, radius, sort_results=sort_results)
        counts = np.fromiter((len(i) for i in indices), dtype=np.int64, count=len(indices))
        indptr = np.concatenate([[0], np.cumsum(counts)])
        columns = np.concatenate([*indices, np.empty(0, np.int64)])
        data = np.ones(len(columns)) if mode == "connectivity" else np.concatenate([*distances, np.empty(0)])
        return sp.csr_matrix((data, columns, indptr), shape=(len(indices), len(self.prototype_)))

    def find_duplicates(self, min_similarity: float = 0.9) -> list[np.ndarray]:
        """Groups of near-identical gallery items.

        Two items are linked when their similarity is at least ``min_similarity`` (exactly,
        in float32); a group is a connected component of those links (so two members may be
        less similar, through a chain), found with :func:`scipy.sparse.csgraph.connected_components`.

        Parameters
        ----------
        min_similarity : float, default=0.9
            On the scale of ``similarity_fn`` (``-distance`` for euclidean).

        Returns
        -------
        groups : list of ndarray of int64
            Rows of ``prototype_``, ascending within a group; groups ordered by their first
            row. Items without a duplicate are left out.

        Examples
        --------
        >>> import numpy as np
        >>> from skretrieval import ImageRetriever
        >>> gallery = [[1.0, 0.0], [0.0, 1.0], [1.0, 0.01], [0.0, 2.0], [1.0, 1.0]]
        >>> ImageRetriever("precomputed").fit(gallery).find_duplicates(0.99)
        [array([0, 2]), array([1, 3])]
        """
        from scipy.sparse.csgraph import connected_components

        check_is_fitted(self)
        radius = float(get_similarity(self.similarity_fn).to_distance(np.float32(min_similarity)))
        graph = self.radius_neighbors_graph(radius=radius)
        _, component = connected_components(graph, directed=False)
        sizes = np.bincount(component)
        order = np.argsort(component, kind="stable")
        groups = np.split(order, np.cumsum(sizes)[:-1])
        return [group for group in groups if len(group) > 1]

    def add(self, X, y=None):
        """Append items to the gallery, encoding only the new ones.

        Parameters
        ----------
        X : images or features
            New gallery items, in any form :meth:`fit` accepts.
        y : array-like of shape (n_new,), default=None
            Their labels. Needed when the gallery was fitted with labels (unless ``X``
            carries them); without, new items continue the ``arange`` labels.

        Returns
        -------
        self : ImageRetriever
            ``prototype_``, ``prototype_labels_``, ``prototype_ids_`` and ``classes_`` are
            extended; the result equals fitting on the concatenated gallery.

        Examples
        --------
        >>> import numpy as np
        >>> from skretrieval import ImageRetriever
        >>> retriever = ImageRetriever("precomputed", topk=1).fit([[1.0, 0.0]], ["a"])
        >>> retriever.add([[0.0, 1.0]], ["b"]).predict([[0.1, 0.9]])
        array(['b'], dtype='<U1')
        """
        check_is_fitted(self)
        features, labels, ids = self._encode_input(X, reset=False)
        features = self._embed(features)
        n_old, n_new = len(self.prototype_), len(features)
        if features.shape[1] != self.prototype_.shape[1]:
            raise ValueError(
                f"X has {features.shape[1]} features, but the gallery has {self.prototype_.shape[1]}; "
                "add items encoded as the gallery was."
            )
        if y is not None:
            labels = column_or_1d(y, warn=True)
            if len(labels) != n_new:
                raise ValueError(f"X has {n_new} samples but y has {len(labels)}; they must match.")
            check_classification_targets(labels)
        if labels is None:
            if not np.array_equal(self.prototype_labels_, np.arange(n_old)):
                raise ValueError(
                    "the gallery was fitted with labels, so add needs y for the new items too."
                )
            labels = np.arange(n_old, n_old + n_new)
        ids = np.arange(n_old, n_old + n_new) if ids is None else np.asarray(ids)
        self.prototype_ = np.concatenate([self.prototype_, features])
        self.prototype_labels_ = _concatenate(self.prototype_labels_, np.asarray(labels))
        self.prototype_ids_ = _concatenate(self.prototype_ids_, ids)
        self.classes_, self._label_codes = np.unique(self.prototype_labels_, return_inverse=True)
        if not isinstance(self.prototype_ids_[-1], str):
            # In-memory gallery images are kept by reference to what fit got; added ones are not.
            self.__dict__.pop("_gallery_source", None)
        return self

    def predict(self, X):
        """Label of each query by a vote of its ``topk`` most similar gallery items.

        Parameters
        ----------
        X : images or features
            Queries.

        Returns
        -------
        y_pred : ndarray of shape (n_queries,)
            Labels from ``classes_``; gallery indices when fitted without ``y``.
        """
        codes, weights = self._votes(X)
        missing = codes[:, 0] < 0  # skipped unreadable queries (on_error)
        if not missing.any():
            return self.classes_[plurality_vote(codes, weights)]
        y_pred = np.full(len(codes), None, dtype=object)
        if not missing.all():
            y_pred[~missing] = self.classes_[plurality_vote(codes[~missing], weights[~missing])]
        return y_pred

    def predict_proba(self, X):
        """Vote shares of every class among the ``topk`` neighbours.

        Parameters
        ----------
        X : images or features
            Queries.

        Returns
        -------
        proba : ndarray of shape (n_queries, n_classes)
            Rows sum to 1; columns follow ``classes_`` (the gallery items when fitted
            without ``y``).
        """
        codes, weights = self._votes(X)
        missing = codes[:, 0] < 0
        if not missing.any():
            return class_probabilities(codes, weights, len(self.classes_))
        proba = np.full((len(codes), len(self.classes_)), np.nan)
        if not missing.all():
            proba[~missing] = class_probabilities(codes[~missing], weights[~missing], len(self.classes_))
        return proba

    def dump_prototype(self, path):
        """Write the gallery features, labels and ids to ``path`` (``fit`` accepts the file).

        ``.pt`` (torch, loaded with ``weights_only=True``) and ``.npz`` keep labels and ids;
        ``.npy`` holds the features alone.

        Parameters
        ----------
        path : str or Path
            Ends in ``.pt``, ``.npz`` or ``.npy``.

        Returns
        -------
        path : Path
        """
        check_is_fitted(self)
        path = Path(path)
        suffix = path.suffix.lower()
        labels, ids = _savable(self.prototype_labels_), _savable(self.prototype_ids_)
        if suffix == ".npy":
            np.save(path, self.prototype_)
        elif suffix == ".npz":
            np.savez(path, features=self.prototype_, labels=labels, ids=ids)
        elif suffix == ".pt":
            torch.save(
                {"features": torch.from_numpy(self.prototype_), "labels": labels.tolist(), "ids": ids.tolist()},
                path,
            )
        else:
            raise ValueError(f"dump_prototype path must end in .pt, .npz or .npy; got {str(path)!r}.")
        return path

    def save(self, path):
        """Write the fitted retriever to ``path`` safely: JSON, safetensors, ``.npy``, no pickle.

        The file is a zip archive (``.skr`` by convention) that :func:`skretrieval.load`
        reads back without executing anything from it. A named encoder is stored by name
        and weights; your own ``nn.Module`` by its ``state_dict`` (pass it again as
        ``load(path, encoder=module)``); a fine-tuned projection and head likewise (your own
        head: ``load(path, head=module)``). Parameters that are not JSON values (a callable
        ``similarity_fn`` or ``vote``, a ``RandomState``) raise a ``ValueError``: use joblib
        for those.

        Parameters
        ----------
        path : str or Path
            The file to write.

        Returns
        -------
        path : Path

        Examples
        --------
        >>> import tempfile, os
        >>> from skretrieval import ImageRetriever, load
        >>> model = ImageRetriever("precomputed", topk=1).fit([[1.0, 0.0], [0.0, 1.0]])
        >>> path = model.save(os.path.join(tempfile.mkdtemp(), "model.skr"))
        >>> load(path).kneighbors([[0.0, 1.0]])[1]
        array([[1]])
        """
        from ._persistence import save

        return save(self, path)

    def __getstate__(self):
        state = super().__getstate__()  # a copy of __dict__ (EncoderMixin)
        # The gallery images are referenced for display only: a pickle keeps no pixels
        # (file galleries still show, from the paths in prototype_ids_).
        state.pop("_gallery_source", None)
        state.pop("_search_cache", None)  # the device copy of the gallery; rebuilt on demand
        return state

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = False
        tags.transformer_tags = TransformerTags(preserves_dtype=["float32"])
        return tags

    def _query_features(self, X) -> np.ndarray:
        features = self._encode_input(X, reset=False)[0]
        if np.isnan(features).all():  # every query was an unreadable file (on_error="skip")
            return np.full((len(features), self.prototype_.shape[1]), np.nan, np.float32)
        features = self._embed(features)
        if features.shape[1] != self.prototype_.shape[1]:
            raise ValueError(
                f"X has {features.shape[1]} features, but the gallery of {type(self).__name__} has "
                f"{self.prototype_.shape[1]}; query with the same encoder (or feature size) as fit."
            )
        return features

    def _search(self, queries, k):
        exclude_self = queries is None
        k = self._resolve_k(self.topk if k is None else k, exclude_self)
        if not exclude_self:
            valid = ~np.isnan(queries).any(axis=1)  # NaN rows: queries skipped by on_error
            if not valid.all():
                similarities = np.full((len(queries), k), -np.inf, np.float32)
                indices = np.full((len(queries), k), -1, np.int64)
                if valid.any():
                    similarities[valid], indices[valid] = self._search(queries[valid], k)
                return similarities, indices
        return topk_search(
            self.prototype_ if exclude_self else queries,
            self._search_gallery(),
            k,
            get_similarity(self.similarity_fn),
            exclude_self=exclude_self,
            working_memory=self.working_memory,
        )

    def _search_gallery(self) -> SearchGallery:
        """The gallery prepared for search, resident on ``device_`` in the search dtype.

        Built on first use and kept until the prototype, similarity, precision or device
        changes; never pickled.
        """
        similarity = get_similarity(self.similarity_fn)
        dtype = resolve_precision(self.search_precision, self.device_)
        key = (repr(similarity), dtype, str(self.device_))
        cache = self.__dict__.setdefault("_search_cache", _SearchCache())
        if cache.prototype is not self.prototype_ or cache.key != key:
            cache.gallery = SearchGallery(self.prototype_, similarity, dtype, self.device_)
            cache.prototype, cache.key = self.prototype_, key
        return cache.gallery

    def _resolve_k(self, k, exclude_self: bool) -> int:
        available = len(self.prototype_) - int(exclude_self)
        if not isinstance(k, Integral) or isinstance(k, bool) or (k < 1 and k != -1):
            raise ValueError(f"n_neighbors must be a positive int or -1 (all); got {k!r}.")
        k = available if k == -1 else int(k)
        if k > available:
            whose = "the gallery minus the query itself" if exclude_self else "the gallery"
            raise ValueError(
                f"{k} neighbours requested (topk/n_neighbors), but {whose} holds only {available} "
                f"item(s); lower topk or n_neighbors, or use -1 for all."
            )
        if k < 1:
            raise ValueError("the gallery holds a single item, which has no neighbour but itself.")
        return k

    def _votes(self, X):
        check_is_fitted(self)
        similarities, indices = self._search(self._query_features(X), None)
        codes = np.where(indices < 0, -1, self._label_codes[indices])
        return codes, vote_weights(self.vote, np.where(indices < 0, 0, similarities))

    def _gallery_image(self, i: int) -> np.ndarray:
        """Gallery item ``i`` as an ``(H, W, 3)`` float array in [0, 1], read from its source.

        Files are read from the path in ``prototype_ids_``; other images from what ``fit``
        was given (kept by reference, never copied).
        """
        check_is_fitted(self)
        where = f"gallery item {i}"
        path = self.prototype_ids_[i]
        if isinstance(path, str):
            return _image_array(path, where)
        if not hasattr(self, "_gallery_source"):
            raise ValueError(
                f"this {type(self).__name__} was unpickled or loaded: it keeps the paths of a "
                "gallery read from files, not in-memory gallery images; pass the gallery images "
                "yourself (RetrievalDisplay.from_predictions)."
            )
        item = self._gallery_source
        if not isinstance(item, (str, os.PathLike)) and not sp.issparse(item):
            item = item[i]
            if isinstance(item, (tuple, list)) and len(item) == 2:  # a Dataset's (image, label)
                item = item[0]
        if np.ndim(item) < 2 and not hasattr(item, "getpixel"):  # not an image (PIL has no ndim)
            raise ValueError(
                f"{type(self).__name__} was fitted on features, not images, so gallery item {i} "
                "has no image to show; fit it on images or paths, or pass the gallery images "
                "yourself (e.g. RetrievalDisplay.from_predictions)."
            )
        return _image_array(item, where)


def _check_graph_mode(mode) -> None:
    if mode not in ("connectivity", "distance"):
        raise ValueError(f"mode={mode!r} is not supported; use 'connectivity' or 'distance'.")


def _concatenate(old: np.ndarray, new: np.ndarray) -> np.ndarray:
    """Append labels or ids; mixed kinds (e.g. paths after integers) become objects."""
    if old.dtype.kind != new.dtype.kind and not {old.dtype.kind, new.dtype.kind} <= {"i", "u"}:
        old, new = old.astype(object), new.astype(object)
    return np.concatenate([old, new])


class _SearchCache:
    """Holder of the resident search gallery.

    Filled in place, so querying never adds or replaces an attribute of the estimator
    (scikit-learn checks that predict leaves ``__dict__`` unchanged); compared by identity.
    """

    prototype = key = gallery = None


def _savable(values: np.ndarray) -> np.ndarray:
    """Labels or ids as a numpy array that loads without pickle."""
    values = np.asarray(values)
    return values.astype(str) if values.dtype == object else values


def _image_array(item, where: str) -> np.ndarray:
    """One image (path, PIL, array, tensor) as an ``(H, W, 3)`` float32 array in [0, 1]."""
    return to_unit_float(_item_tensor(item, where)).permute(1, 2, 0).numpy()
