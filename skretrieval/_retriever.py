"""ImageRetriever: encode a gallery, find the most similar images, vote on labels."""

from __future__ import annotations

import os
import sys
import time
from numbers import Integral, Real
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

from ._encoder import EncoderMixin, ImageEncoder
from ._neighbors import GalleryMixin, _aligned_labels
from ._open_set import OPEN_SET_CONSTRAINTS, fit_threshold
from ._persistence import read_model
from ._persistence import save as save_model
from ._sklearn_compat import Interval, Options, StrOptions, TransformerTags, _fit_context
from .io import list_image_files, to_unit_float
from .io._inputs import _item_tensor
from .io._stats import UNKNOWN, file_stats
from .search import (
    PRECISIONS,
    SIMILARITY_NAMES,
    STORAGE_DTYPES,
    SearchGallery,
    get_similarity,
    radius_search,
    resolve_precision,
    topk_search,
)
from .search._approximate import (
    ALGORITHMS,
    ApproximateIndex,
    build_key,
    check_algorithm,
    resolve_params,
)
from .search._storage import to_storage
from .training import TRAINING_CONSTRAINTS, FineTuneMixin


class ImageRetriever(GalleryMixin, FineTuneMixin, EncoderMixin, ClassifierMixin, BaseEstimator):
    """Image-to-image retrieval: a gallery of encoded images searched by similarity.

    ``fit`` encodes the gallery (the "prototype"); ``kneighbors``/``search`` return the most
    similar gallery items of each query; ``predict`` votes over the labels of the ``topk``
    best matches, as :class:`~sklearn.neighbors.KNeighborsClassifier` does.

    Parameters
    ----------
    encoder : str, nn.Module, callable or ImageEncoder, default="efficientnet_lite0"
        How images become features: an :class:`ImageEncoder`, which holds every encoding
        option (weights, preprocessing, batch size, device, ``memory=`` cache, ``on_error``,
        threads, precision, compilation); its options grid-search as ``encoder__batch_size``
        and so on. A name from :func:`skretrieval.encoders.list_encoders` (the default
        EfficientNet-Lite0 works offline with ImageNet weights), a ``torch.nn.Module`` or a
        callable, or ``"precomputed"`` (``X`` already is features) is short for
        ``ImageEncoder(encoder)`` with its defaults. The retriever builds its own encoder
        from these options in ``fit`` (``encoder_``): the given ``ImageEncoder`` and module
        are never modified or fitted. Search and training run on the encoder's ``device``.
        Unreadable image files follow the encoder's ``on_error``: in ``fit`` (and ``add``)
        they are left out and listed in ``skipped_``, everything else (``y``,
        ``prototype_ids_``) staying aligned; at query time rows stay aligned with ``X``: a
        bad query's ``transform`` row is all NaN, its ``kneighbors`` indices ``-1`` and
        distances ``inf`` (``search``: similarities ``-inf``), its ``predict`` value
        ``None`` (the result then has dtype object) and its ``predict_proba`` row NaN.
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
    threshold : float, "auto" or None, default=None
        Open-set retrieval: the least similarity of a query's best match (on the scale of
        ``similarity_fn``, ``-distance`` for euclidean; compared in float32) for ``predict``
        to answer with a gallery label; a query whose best match is below it is rejected
        (an equal one is accepted) and gets ``outlier_label``. ``"auto"``: ``fit`` chooses
        it so that a query of a class absent from the gallery is accepted at about
        ``false_match_rate``, by holding each class out of the gallery in turn and taking
        the best matches of its items among the other classes; without ``y`` it leaves
        items out. None: closed set, every query gets a gallery label.
    outlier_label : int, str, "most_frequent" or None, default=None
        The answer of ``predict`` for a rejected query, as in
        :class:`~sklearn.neighbors.RadiusNeighborsClassifier`: a label of the gallery
        labels' kind (a number for numbers, a string for strings; else ``fit`` raises a
        ``TypeError``), ``"most_frequent"`` (the most frequent gallery label), or None:
        ``predict`` and ``predict_proba`` raise a ``ValueError`` naming the rejected queries.
    false_match_rate : float, default=0.05
        With ``threshold="auto"``: the share of queries of absent classes that may be
        accepted, in [0, 1]. See :mod:`skretrieval.metrics` for FMR/FNMR.
    working_memory : float, default=None
        MiB that one block of similarity scores may take during search; scikit-learn's
        ``working_memory`` setting when None.
    search_precision : {"auto", "fp32", "bf16", "fp16"}, default="auto"
        Dtype of the similarity matrix products. Results are the float32 results in every
        mode: bf16/fp16 products only select candidates within a bound of their rounding
        error, which are re-scored in float32. ``"auto"`` uses bf16 on CUDA and on CPUs with
        bf16 matrix units (AMX-BF16, AVX512-BF16), fp32 otherwise; ``"fp16"`` needs a GPU.
        A callable ``similarity_fn`` always runs in fp32.
    algorithm : {"brute", "ivf", "hnsw"}, default="brute"
        How :meth:`kneighbors`, :meth:`search` and :meth:`predict` find the nearest gallery
        items (scikit-learn's ``NearestNeighbors`` word). ``"brute"``: the exact blocked
        search. ``"ivf"`` (faiss ``IndexIVFFlat``, an inverted file of ``nlist`` k-means cells
        of which ``nprobe`` are searched per query) and ``"hnsw"`` (faiss ``IndexHNSWFlat``, a
        navigable graph) are approximate: faster on large galleries, but a true neighbour may
        be missed (then a less similar item takes its place, or the slot is ``-1`` /
        ``-inf``). The rows found are scored exactly in float32, so their scores equal the
        exact search's. They need faiss (``pip install "skretrieval[ann]"``; an ImportError
        says so), run on the CPU in float32 whatever ``device`` and ``search_precision``, and
        keep their own copy of the gallery (about its size again), built on the first query
        and after ``add``, never pickled or saved. ``radius_neighbors``, ``find_duplicates``
        and ``threshold="auto"`` always search exactly. A callable ``similarity_fn`` needs
        ``"brute"``. See :doc:`/large_galleries`.
    algorithm_params : dict, default=None
        Options of ``algorithm``, each a positive int; None or a missing key: a default from
        the gallery size. ``"ivf"``: ``nlist`` (default ``4 sqrt(n_gallery)``, at most
        ``n_gallery / 39``), ``nprobe`` (default ``sqrt(nlist)``, at most ``nlist``; higher:
        better recall, slower). ``"hnsw"``: ``M`` (graph links per item, default 32),
        ``efConstruction`` (default 80), ``efSearch`` (default 64, at least ``2 k``; higher:
        better recall, slower). Changing ``nprobe`` or ``efSearch`` does not rebuild the index.
    gallery_dtype : {"float32", "float16"}, default="float32"
        How ``prototype_`` is stored. ``"float16"`` halves the gallery's memory (and its
        model file); magnitudes above 65504 raise a ``ValueError`` in ``fit``/``add``.
        Search results are exact for the stored vectors: every block is upcast to float32
        for the products and the re-scoring, never a whole copy (see
        :doc:`/large_galleries` for the recall it costs against float32 storage). A
        memory-mapped gallery (``fit`` of a :class:`numpy.memmap`, or
        ``load(path, mmap=True)``) of this dtype stays on disk.
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
    prototype_ : ndarray of shape (n_gallery, n_features), float32 or float16
        The encoded gallery, in ``gallery_dtype``. Fitted on a memory-mapped array of that
        dtype (``encoder="precomputed"``, no head), it is that array: kept on disk, and
        searched block by block from the file (``np.load(path, mmap_mode="r")`` keeps a
        ``.npy`` file on disk; a path is read into memory). ``add`` then copies it into
        memory (the file is never written).
    prototype_labels_ : ndarray of shape (n_gallery,)
        Label of each gallery item: ``y``, the labels a Dataset yields, or ``arange(n)``.
    prototype_ids_ : ndarray of shape (n_gallery,)
        File path of each gallery item when it came from files, else ``arange(n)``.
    labels_are_rows_ : bool
        True when the gallery has no labels (fitted without ``y``, nor labels from the
        input): ``prototype_labels_`` are then its row numbers, which :meth:`add` continues
        and :meth:`remove` numbers anew. Labels given as ``y`` are never renumbered, even
        when they are ``0`` to ``n - 1``.
    prototype_file_stats_ : ndarray of shape (n_gallery, 2), int64
        Size in bytes and modification time (``st_mtime_ns``) of each gallery file when it
        was encoded, which :meth:`update` compares; ``-1`` for items that are no file, or
        were modified within 2 s of being encoded. Only when some item came from a file.
    skipped_ : list of tuple
        ``(index in X, path, reason)`` of each image file ``fit`` left out
        (``on_error="skip"``/``"warn"``); empty otherwise.
    classes_ : ndarray of shape (n_classes,)
        Sorted distinct labels. Fitted without ``y``, every gallery item is its own class,
        so ``predict`` returns gallery indices and ``predict_proba`` is
        ``(n_queries, n_gallery)``.
    threshold_ : float or None
        The threshold in use: ``threshold`` itself, or the one ``"auto"`` chose. ``add``
        keeps it, ``"auto"`` included (it is not re-estimated as the gallery grows; re-fit
        to re-estimate, with ``memory=`` nothing is encoded again).
    outlier_label_ : scalar or None
        The label of rejected queries (``"most_frequent"`` resolved).
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
        "encoder": [str, callable, ImageEncoder],
        "similarity_fn": [StrOptions(set(SIMILARITY_NAMES)), callable],
        "topk": [Interval(Integral, 1, None, closed="left"), Options(Integral, {-1})],
        "vote": [StrOptions({"uniform", "similarity"}), callable],
        "working_memory": [None, Interval(Real, 0, None, closed="neither")],
        "search_precision": [StrOptions(set(PRECISIONS))],
        "algorithm": [StrOptions(set(ALGORITHMS))],
        "algorithm_params": [None, dict],
        "gallery_dtype": [StrOptions(set(STORAGE_DTYPES))],
        **OPEN_SET_CONSTRAINTS,
        **TRAINING_CONSTRAINTS,
    }

    def __init__(
        self,
        encoder="efficientnet_lite0",
        *,
        similarity_fn="cosine",
        topk=5,
        vote="uniform",
        threshold=None,
        outlier_label=None,
        false_match_rate=0.05,
        working_memory=None,
        search_precision="auto",
        algorithm="brute",
        algorithm_params=None,
        gallery_dtype="float32",
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
        self.similarity_fn = similarity_fn
        self.topk = topk
        self.vote = vote
        self.threshold = threshold
        self.outlier_label = outlier_label
        self.false_match_rate = false_match_rate
        self.working_memory = working_memory
        self.search_precision = search_precision
        self.algorithm = algorithm
        self.algorithm_params = algorithm_params
        self.gallery_dtype = gallery_dtype
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
        self._options._validate_params()  # the encoding options, as ImageEncoder declares them
        check_algorithm(self.algorithm, self.algorithm_params, get_similarity(self.similarity_fn))
        warm = self._check_training()
        if not warm:
            self._fit_encoder()
        if self.head is not None and self.fine_tune == "all":
            self._fit_embedding_images(X, y, warm)  # trains encoder_ and projection_
        # A head trains on float32 features from the eager encoder, whatever the settings
        # (fit's promise of reproducible training); queries may run faster.
        started = time.time_ns()
        features, labels, ids, self.skipped_ = self._encode_input(X, reset=True, exact=self.head is not None)
        n = len(features)
        if y is not None:
            labels = _aligned_labels(y, n, self.skipped_)
        self._fit_embedding(features, labels, warm)  # fine_tune="head": projection_ on cached features
        self.prototype_ = to_storage(self._embed(features), self.gallery_dtype)
        resolve_params(self.algorithm, self.algorithm_params, n)  # an nlist the gallery can hold
        self._set_gallery(labels, np.arange(n) if ids is None else ids)
        self.__dict__.pop("prototype_file_stats_", None)
        self._extend_file_stats(0, file_stats(ids, changed_since_ns=started))
        self._search_cache = _SearchCache()  # filled by the first query
        self.threshold_ = fit_threshold(
            self.threshold, self.false_match_rate, self._search_rows, self.prototype_labels_
        )
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
            The stored gallery (with ``gallery_dtype="float16"``, its float16 values).
        """
        return np.array(self.fit(X, y).prototype_, dtype=np.float32)

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

    def update(self, X, y=None):
        """Make the gallery the image files ``X``, encoding only the files new or changed.

        A file is unchanged when its path, size and modification time (``st_mtime_ns``)
        equal those recorded when it was encoded (``prototype_file_stats_``): its row is
        kept as it is, not read again. Every other file of ``X`` is encoded; gallery items
        that are not among ``X`` (deleted files, items that were not files) are dropped.
        No content hash is computed: that would read every file. So a file rewritten with
        its old size and modification time restored (``cp -p`` of an other version of the
        same size) is not seen; fit anew then. A model without recorded file stats (saved
        before skretrieval recorded them, or fitted on other inputs) has every file
        encoded again.

        Parameters
        ----------
        X : str, path-like or list of them
            A folder (its image files, as :meth:`fit` reads it) or a list of image files.
        y : array-like of shape (n_files,), default=None
            Labels of every file of ``X`` (e.g. from :func:`skretrieval.io.list_labelled_images`);
            needed when the gallery has labels.

        Returns
        -------
        self : ImageRetriever
            Equal to ``fit(X, y)`` with this retriever's encoder and head (rows in the order
            of ``X``; ``skipped_`` lists the unreadable files of ``X`` encoded now), except
            that ``threshold_`` is kept as it is, as in :meth:`add`. With ``verbose``, the
            counts of unchanged, encoded and dropped items are printed on stderr first.

        Examples
        --------
        >>> import os, tempfile
        >>> import numpy as np
        >>> from PIL import Image
        >>> from skretrieval import ImageEncoder, ImageRetriever
        >>> folder = tempfile.mkdtemp()
        >>> for name, value in [("a.png", 0), ("b.png", 128)]:
        ...     Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(os.path.join(folder, name))
        ...     os.utime(os.path.join(folder, name), (1e9, 1e9))  # written long before the fit
        >>> encoder = ImageEncoder(lambda x: x.mean(dim=(2, 3)), preprocessing={"size": 8}, device="cpu")
        >>> retriever = ImageRetriever(encoder, topk=1).fit(folder)
        >>> os.remove(os.path.join(folder, "a.png"))
        >>> Image.fromarray(np.full((8, 8, 3), 255, np.uint8)).save(os.path.join(folder, "c.png"))
        >>> [os.path.basename(p) for p in retriever.update(folder).prototype_ids_]  # c.png encoded
        ['b.png', 'c.png']
        """
        check_is_fitted(self)
        started = time.time_ns()
        files = _update_files(X)
        labels = None if y is None else _aligned_labels(y, len(files), [])
        if labels is None and not self._labels_are_rows():
            raise ValueError(
                "the gallery was fitted with labels, so update needs the labels of the files "
                "too (update(X, y); skretrieval.io.list_labelled_images returns both)."
            )
        # Stats taken before the files are read: a file written meanwhile differs next time.
        stats = file_stats(files, changed_since_ns=started)
        stats = np.full((len(files), 2), UNKNOWN, np.int64) if stats is None else stats
        rows = self._unchanged_rows(files, stats)
        encode = np.flatnonzero(rows < 0)
        if self.verbose:
            print(
                f"update: {len(files) - len(encode)} files unchanged, {len(encode)} to encode (new or "
                f"changed), {self._n_gallery() - len(np.unique(rows[rows >= 0]))} gallery items dropped",
                file=sys.stderr,
            )
        features, skipped = np.empty((0, self._n_features()), np.float32), []
        if len(encode):
            features, _, _, skipped = self._encode_items([files[i] for i in encode])
        kept = np.setdiff1d(np.arange(len(files)), encode[[index for index, _, _ in skipped]])
        if not len(kept):
            raise ValueError(
                f"update found no readable image file in {_described(X)} ({len(skipped)} unreadable); "
                "the gallery cannot be empty, so it was left as it was."
            )
        gallery = np.empty((len(kept), self._n_features()), np.dtype(self.gallery_dtype))
        from_gallery = rows[kept] >= 0
        gallery[from_gallery] = self.prototype_[rows[kept][from_gallery]]
        gallery[~from_gallery] = to_storage(features, self.gallery_dtype)
        self.prototype_ = gallery
        for stale in ("_gallery_source", "n_features_in_"):  # a gallery of files, as fit(X) leaves it
            self.__dict__.pop(stale, None)
        names = np.asarray(files)[kept]
        self._set_gallery(None if labels is None else labels[kept], names)
        self.prototype_file_stats_ = stats[kept]
        self.skipped_ = [(int(encode[index]), path, reason) for index, path, reason in skipped]
        return self

    def _unchanged_rows(self, files: list, stats: np.ndarray) -> np.ndarray:
        """The gallery row of each file that is unchanged since it was encoded; -1 for the others."""
        recorded = getattr(self, "prototype_file_stats_", None)
        rows = np.full(len(files), -1, np.int64)
        if recorded is None:
            return rows
        known = {path: row for row, path in enumerate(self.prototype_ids_.tolist()) if isinstance(path, str)}
        rows[:] = [known.get(path, -1) for path in files]
        found = rows >= 0
        same = (recorded[rows[found]] == stats[found]).all(axis=1) & (stats[found, 0] != UNKNOWN)
        rows[np.flatnonzero(found)[~same]] = -1
        return rows

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
        return save_model(self, path)

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

    @property
    def _options(self) -> ImageEncoder:
        """The ImageEncoder whose options encode (a name or module is short for one)."""
        encoder = self.encoder
        return encoder if isinstance(encoder, ImageEncoder) else ImageEncoder(encoder)

    # -- how this gallery is stored and searched (GalleryMixin's hooks) --------------------

    def _n_gallery(self) -> int:
        return len(self.prototype_)

    def _n_features(self) -> int:
        return self.prototype_.shape[1]

    def _gallery_topk(self, queries, k: int):
        if self.algorithm != "brute":
            return self._approximate_index().search(
                self.prototype_ if queries is None else queries, k, exclude_self=queries is None,
                params=self.algorithm_params, working_memory=self.working_memory,
            )
        return self._exact_topk(queries, k)

    def _exact_topk(self, queries, k: int):
        return topk_search(
            self.prototype_ if queries is None else queries,
            self._search_gallery(),
            k,
            get_similarity(self.similarity_fn),
            exclude_self=queries is None,
            working_memory=self.working_memory,
        )

    def _gallery_radius(self, queries, radius: float, sort_results: bool):
        return radius_search(
            self.prototype_ if queries is None else queries,
            self._search_gallery(),
            radius,
            get_similarity(self.similarity_fn),
            exclude_self=queries is None,
            sort_results=sort_results,
            working_memory=self.working_memory,
        )

    def _search_rows(self, rows: np.ndarray, k: int):
        # gallery rows as ordinary queries: k may reach the whole gallery (threshold="auto"),
        # which only the exact search answers in full, whatever the algorithm
        return self._exact_topk(self.prototype_[rows], k)

    def _append_gallery(self, features: np.ndarray) -> None:
        # A memory-mapped gallery is copied into memory: its file (a model file, or the
        # user's features) is never written.
        self.prototype_ = np.concatenate([self.prototype_, to_storage(features, self.gallery_dtype)])
        # In-memory gallery images are kept by reference to what fit got; added ones are not.
        self.__dict__.pop("_gallery_source", None)

    def _remove_gallery(self, rows: np.ndarray) -> None:
        self.prototype_ = np.delete(self.prototype_, rows, axis=0)
        self.__dict__.pop("_gallery_source", None)  # its items no longer match the rows

    def _search_gallery(self) -> SearchGallery:
        """The gallery prepared for search: resident on ``device_`` in the search dtype, or
        streamed from its float16 or memory-mapped storage.

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

    def _approximate_index(self):
        """The faiss index of ``prototype_`` for ``algorithm`` (see ``_search_gallery``).

        Built on the first query and kept, like the exact search's gallery, until the
        prototype, similarity or an option the index is built with changes; never pickled.
        """
        similarity = get_similarity(self.similarity_fn)
        key = (repr(similarity), build_key(self.algorithm, self.algorithm_params))
        cache = self.__dict__.setdefault("_search_cache", _SearchCache())
        prototype, built_key, index = cache.approximate or (None, None, None)
        if prototype is not self.prototype_ or built_key != key:
            index = ApproximateIndex(self.prototype_, similarity, self.algorithm, self.algorithm_params)
            cache.approximate = (self.prototype_, key, index)
        return index

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



def load(path, *, encoder=None, head=None, device=None, mmap=False):
    """Load a model written by :meth:`ImageRetriever.save`, without unpickling anything.

    The file is checked before any of it is read: only the entries ``save`` writes, each
    once and uncompressed, each entry's size equal to what its own header declares, all of
    them within the file (see :doc:`/persistence`). So opening a file costs about its size
    in memory at most, whatever it claims to hold.

    Parameters
    ----------
    path : str or Path
        The model file (a zip archive; ``.skr`` by convention).
    encoder : nn.Module or callable, default=None
        Required when the model was fitted with your own module or callable (alone or in an
        ``ImageEncoder``, whose options the file keeps): the file holds its weights, never
        its code. The module must have the same architecture; its copy receives the saved
        weights.
    head : nn.Module or callable, default=None
        Required when the model was fine-tuned with your own head: as ``encoder``, a copy of
        the module receives the trained weights.
    device : str or torch.device, default=None
        Where to run; None keeps the saved ``device`` parameter, falling back to the CPU
        when it names a GPU this machine lacks.
    mmap : bool, default=False
        Open the gallery (``prototype_``) memory-mapped in the file instead of reading it:
        loading then reads only the header and the labels, and searches stream the gallery
        from the file in blocks, so resident memory stays within ``working_memory`` and not
        the gallery's size (see :doc:`/large_galleries`). The file must stay in place and
        unchanged while the model is used; the gallery's checksum is not verified (its
        size and layout are, as without ``mmap``).

    Returns
    -------
    estimator : ImageRetriever
        Fitted; ``kneighbors``, ``predict`` and ``transform`` give the saved model's results.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    FileFormatError
        The file is not a model file, is damaged, or was written by a newer skretrieval;
        the message says why (a ``ValueError``).

    Examples
    --------
    >>> import tempfile, os
    >>> import skretrieval
    >>> model = skretrieval.ImageRetriever("precomputed", topk=1).fit([[1.0, 0.0], [0.0, 1.0]], ["a", "b"])
    >>> path = os.path.join(tempfile.mkdtemp(), "model.skr")
    >>> _ = model.save(path)
    >>> skretrieval.load(path).predict([[0.9, 0.1]])
    array(['a'], dtype='<U1')
    """
    return read_model(path, ImageRetriever, encoder=encoder, head=head, device=device, mmap=mmap)


class _SearchCache:
    """Holder of the resident search gallery.

    Filled in place, so querying never adds or replaces an attribute of the estimator
    (scikit-learn checks that predict leaves ``__dict__`` unchanged); compared by identity.
    """

    prototype = key = gallery = None
    approximate = None  # (prototype, key, ApproximateIndex) of algorithm="ivf" / "hnsw"


def _update_files(X) -> list[str]:
    """The image files ``update`` makes the gallery of: a folder's, or those listed."""
    if isinstance(X, (str, os.PathLike)) and os.path.isdir(X):
        return list_image_files(X)
    if isinstance(X, (list, tuple)) and all(isinstance(x, (str, os.PathLike)) for x in X):
        return [os.fspath(x) for x in X]
    what = f"{os.fspath(X)!r}, which is not a folder" if isinstance(X, (str, os.PathLike)) else type(X).__name__
    raise ValueError(f"update takes a folder or a list of image file paths; got {what}.")


def _described(X) -> str:
    return repr(os.fspath(X)) if isinstance(X, (str, os.PathLike)) else f"the {len(X)} files given"


def _savable(values: np.ndarray) -> np.ndarray:
    """Labels or ids as a numpy array that loads without pickle."""
    values = np.asarray(values)
    return values.astype(str) if values.dtype == object else values


def _image_array(item, where: str) -> np.ndarray:
    """One image (path, PIL, array, tensor) as an ``(H, W, 3)`` float32 array in [0, 1]."""
    return to_unit_float(_item_tensor(item, where)).permute(1, 2, 0).numpy()
