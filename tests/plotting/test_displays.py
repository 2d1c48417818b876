"""RetrievalDisplay and RecallAtKDisplay: rendered with Agg and checked for content."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import TinyEncoder

from skretrieval import ImageEncoder, ImageRetriever
from skretrieval.metrics import get_scorer, recall_at_k
from skretrieval.plotting import RecallAtKDisplay, RetrievalDisplay

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
plt = pytest.importorskip("matplotlib.pyplot")
to_rgba = matplotlib.colors.to_rgba

GREEN, RED = to_rgba("tab:green"), to_rgba("tab:red")


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture
def fitted(colour_images, tiny_prep):
    images, labels = colour_images
    retriever = ImageRetriever(ImageEncoder(TinyEncoder(), preprocessing=tiny_prep, device="cpu"))
    return retriever.fit(images, labels), images, labels


def _shown(ax) -> np.ndarray:
    return np.asarray(ax.images[0].get_array())


def _frame(ax):
    return {to_rgba(spine.get_edgecolor()) for spine in ax.spines.values()}


def test_from_estimator_rows_titles_frames_and_images(fitted, tmp_path):
    retriever, images, labels = fitted
    queries = images[[0, 9, 17]]
    y_query = np.array([0, 1, 0])  # the last query is a blue image labelled 0: all matches wrong
    display = RetrievalDisplay.from_estimator(retriever, queries, y_query, topk=4)
    similarities, indices = retriever.search(queries, k=4)

    assert display.axes_.shape == (3, 5)
    assert len(display.figure_.axes) == 15
    for q in range(3):
        assert display.axes_[q, 0].get_title() == f"query\n{y_query[q]}"
        np.testing.assert_allclose(_shown(display.axes_[q, 0]), queries[q] / 255, atol=1e-6)
        for r in range(4):
            ax, i = display.axes_[q, r + 1], indices[q, r]
            assert ax.get_title() == f"#{r + 1}  {similarities[q, r]:.3f}\n{labels[i]}"
            np.testing.assert_allclose(_shown(ax), images[i] / 255, atol=1e-6)
            correct = labels[i] == y_query[q]
            assert display.correct_[q, r] == correct
            assert _frame(ax) == {GREEN if correct else RED}
    assert display.correct_[:2].all() and not display.correct_[2].any()

    path = tmp_path / "retrieval.png"
    display.figure_.savefig(path)
    rendered = plt.imread(path)[..., :3]
    is_red = (rendered[..., 0] > 0.7) & (rendered[..., 1] < 0.3) & (rendered[..., 2] < 0.3)
    is_green = (rendered[..., 1] > 0.5) & (rendered[..., 0] < 0.3) & (rendered[..., 2] < 0.3)
    assert is_red.sum() > 100 and is_green.sum() > 100  # frames (and red/green images) drawn


def test_without_labels_no_frames(fitted):
    retriever, images, _ = fitted
    display = RetrievalDisplay.from_estimator(retriever, images[:2], topk=3)
    assert display.correct_ is None
    assert display.axes_.shape == (2, 4)
    assert display.axes_[0, 1].get_title().count("\n") == 0
    assert GREEN not in _frame(display.axes_[0, 1]) and RED not in _frame(display.axes_[0, 1])


def _write_images(root, images, labels):
    from PIL import Image

    paths = []
    for n, (image, label) in enumerate(zip(images, labels)):
        folder = root / f"class{label}"
        folder.mkdir(parents=True, exist_ok=True)
        paths.append(folder / f"{n:03d}.png")
        Image.fromarray(image).save(paths[-1])
    return paths


def test_gallery_read_back_from_files(colour_images, tiny_prep, tmp_path):
    images, labels = colour_images
    _write_images(tmp_path, images, labels)
    retriever = ImageRetriever(
        ImageEncoder(TinyEncoder(), preprocessing=tiny_prep, device="cpu"),
    ).fit(tmp_path)
    display = RetrievalDisplay.from_estimator(retriever, images[:1], topk=2)
    first = int(retriever.search(images[:1], k=1)[1][0, 0])
    assert first == 0  # files sorted: class0/000.png is image 0
    np.testing.assert_allclose(_shown(display.axes_[0, 1]), images[0] / 255, atol=1e-6)
    assert not hasattr(retriever, "_gallery_source") or isinstance(retriever._gallery_source, type(tmp_path))


@pytest.mark.parametrize("kind", ["tensor", "pil", "dataset", "dataloader", "grayscale"])
def test_gallery_from_other_sources(colour_images, tiny_prep, kind):
    from PIL import Image

    images, labels = colour_images
    expected = images / 255
    if kind == "tensor":
        gallery = torch.from_numpy(images).permute(0, 3, 1, 2)
    elif kind == "pil":
        gallery = [Image.fromarray(image) for image in images]
    elif kind == "grayscale":
        gallery = images[..., 0]
        expected = np.repeat(gallery[..., None] / 255, 3, axis=-1)
    else:
        tensors = torch.from_numpy(images).permute(0, 3, 1, 2)
        dataset = torch.utils.data.TensorDataset(tensors, torch.from_numpy(labels))
        gallery = dataset if kind == "dataset" else torch.utils.data.DataLoader(dataset, batch_size=5)
    retriever = ImageRetriever(ImageEncoder(TinyEncoder(), preprocessing=tiny_prep, device="cpu"))
    retriever.fit(gallery, None if kind in ("dataset", "dataloader") else labels)
    for i in (0, 13, 23):
        np.testing.assert_allclose(retriever._gallery_image(i), expected[i], atol=1e-6)
    display = RetrievalDisplay.from_estimator(retriever, gallery if kind == "grayscale" else images[:2], topk=1)
    assert display.axes_.shape[1] == 2


def test_fitted_on_features_has_no_images():
    retriever = ImageRetriever("precomputed").fit(np.eye(3))
    with pytest.raises(ValueError, match="fitted on features"):
        RetrievalDisplay.from_estimator(retriever, np.eye(3)[:1], topk=1)


def test_from_predictions_with_paths_and_errors(colour_images, tmp_path):
    images, labels = colour_images
    paths = _write_images(tmp_path, images[:6], labels[:6])
    display = RetrievalDisplay.from_predictions(
        [paths[0]], [[0.9, 0.5]], [[1, 5]], [str(p) for p in paths],
        y_query=[0], gallery_labels=labels[:6],
    )
    assert [ax.get_title() for ax in display.axes_[0]] == ["query\n0", "#1  0.900\n0", "#2  0.500\n0"]
    np.testing.assert_allclose(_shown(display.axes_[0, 2]), images[5] / 255, atol=1e-6)
    with pytest.raises(ValueError, match="must both be"):
        RetrievalDisplay.from_predictions(images[:1], [[0.9]], [[1, 2]], images)
    with pytest.raises(ValueError, match="must match"):
        RetrievalDisplay.from_predictions(images[:2], [[0.9]], [[1]], images)
    with pytest.raises(ValueError, match="both y_query and gallery_labels"):
        RetrievalDisplay.from_predictions(images[:1], [[0.9]], [[1]], images, y_query=[0])
    labelled = RetrievalDisplay.from_predictions(images[:1], [[0.9]], [[1]], images, gallery_labels=labels)
    assert labelled.axes_[0, 1].get_title() == f"#1  0.900\n{labels[1]}" and labelled.correct_ is None
    assert labelled.axes_[0, 0].get_title() == "query"
    with pytest.raises(ValueError, match="need 4"):
        RetrievalDisplay.from_predictions(images[:2], [[0.9], [0.8]], [[1], [2]], images,
                                          ax=plt.subplots(1, 3)[1])


def test_ax_is_one_axes_or_an_array(fitted):
    retriever, images, _ = fitted
    figure, (left, right) = plt.subplots(1, 2)
    display = RetrievalDisplay.from_estimator(retriever, images[:2], topk=2, ax=right)
    assert display.figure_ is figure
    assert display.axes_.shape == (2, 3) and len(figure.axes) == 2 + 6
    assert not right.axison
    figure, axes = plt.subplots(2, 3)
    display = RetrievalDisplay.from_estimator(retriever, images[:2], topk=2, ax=axes)
    assert display.axes_[1, 2] is axes[1, 2] and display.figure_ is figure


def test_recall_display_matches_metrics(fitted, colour_images, tiny_prep):
    retriever, images, labels = fitted
    rng = np.random.default_rng(1)
    queries = np.clip(images.astype(int) + rng.integers(-90, 90, images.shape), 0, 255).astype(np.uint8)
    other = ImageRetriever(
        ImageEncoder(TinyEncoder(), preprocessing=tiny_prep, device="cpu"),
        similarity_fn="euclidean",
    ).fit(images, labels)
    ks = [1, 2, 5, 10]
    display = RecallAtKDisplay.from_estimator({"cosine": retriever, "euclidean": other}, queries, labels, ks=ks)
    assert [line.get_label() for line in display.lines_] == ["cosine", "euclidean"]
    assert [t.get_text() for t in display.ax_.get_legend().get_texts()] == ["cosine", "euclidean"]
    for line, estimator in zip(display.lines_, (retriever, other)):
        np.testing.assert_array_equal(line.get_xdata(), ks)
        expected = [get_scorer(f"recall@{k}")(estimator, queries, labels) for k in ks]
        np.testing.assert_allclose(line.get_ydata(), expected)
    assert display.ax_.get_xlabel() == "k" and display.ax_.get_ylabel() == "Recall@k"

    # a list is named by position and class; a second display draws on the same axes
    again = RecallAtKDisplay.from_estimator([retriever], queries, labels, ks=ks, ax=display.ax_)
    assert again.ax_ is display.ax_ and len(display.ax_.lines) == 3
    assert again.lines_[0].get_label() == "0: ImageRetriever"


def test_recall_from_predictions_and_errors():
    ranked = [[1, 0, 2], [2, 0, 1], [0, 1, 2]]
    display = RecallAtKDisplay.from_predictions(["a", "b", "c"], ["a", "b", "b"], ranked, ks=[1, 2, 3], name="m")
    expected = recall_at_k(query_labels=["a", "b", "c"], gallery_labels=["a", "b", "b"],
                           ranked_indices=ranked, k=[1, 2, 3])
    np.testing.assert_allclose(display.lines_[0].get_ydata(), expected)
    assert display.lines_[0].get_label() == "m"
    with pytest.raises(ValueError, match="positive ranks"):
        RecallAtKDisplay.from_predictions(["a"], ["a"], [[0]], ks=[0, 1])
    with pytest.raises(ValueError, match="empty"):
        RecallAtKDisplay.from_estimator({}, np.eye(2), [0, 1])


def test_matplotlib_imported_lazily():
    code = "import sys, skretrieval.plotting; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_pickle_keeps_paths_not_pixels(fitted, colour_images, tiny_prep, tmp_path):
    import pickle

    retriever, images, _ = fitted
    restored = pickle.loads(pickle.dumps(retriever))
    assert len(pickle.dumps(retriever)) < len(pickle.dumps(images))  # the gallery images stay out
    with pytest.raises(ValueError, match="unpickled or loaded"):
        RetrievalDisplay.from_estimator(restored, images[:1], topk=1)

    _write_images(tmp_path, images, colour_images[1])
    on_files = ImageRetriever(
        ImageEncoder(TinyEncoder(), preprocessing=tiny_prep, device="cpu"),
    ).fit(tmp_path)
    restored = pickle.loads(pickle.dumps(on_files))
    display = RetrievalDisplay.from_estimator(restored, images[5:6], topk=1)
    np.testing.assert_allclose(_shown(display.axes_[0, 1]), images[5] / 255, atol=1e-6)
