"""The README's main job, end to end with the pretrained default encoder (small inputs)."""

from skretrieval._demo import load_digit_split, run_demo


def test_digit_split_is_the_documented_one():
    X_gallery, X_query, y_gallery, y_query = load_digit_split()
    assert X_gallery.shape == (1347, 8, 8) and X_query.shape == (450, 8, 8)
    assert X_gallery.max() <= 1.0 and X_gallery.min() >= 0.0


def test_demo_retrieves_digits_with_the_pretrained_encoder(capsys):
    results = run_demo(image_size=64, device="cpu", verbose=1)
    # Measured 0.893 at 64 px (0.867 with ImageNet mean/std); chance is 0.1.
    assert results["recall@1"] >= 0.85
    assert results["recall@5"] >= results["recall@1"]
    assert 0.8 < results["knn_accuracy"] <= 1.0
    assert "recall@1" in capsys.readouterr().out
