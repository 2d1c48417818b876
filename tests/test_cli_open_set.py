"""The command line's open-set options: search/evaluate/duplicates --threshold (a number or auto)."""

import json
import shutil

import numpy as np
import pytest
from helpers import CLI_TINY as TINY  # the tiny encoder by name

from skretrieval import ImageRetriever, cli, load
from skretrieval.metrics import detection_identification_rate, equal_error_rate, false_match_rate


@pytest.fixture
def model_and_queries(colour_images, tmp_path, capsys):
    """A model of red and green images (by folder); queries of red, green and blue (unknown)."""
    from PIL import Image

    images, labels = colour_images
    names = np.array(["red", "green", "blue"])[labels]
    for n, (image, name) in enumerate(zip(images, names)):
        split = "queries" if n % 8 >= 5 or name == "blue" else "gallery"
        folder = tmp_path / split / name
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{n:02d}.png")
    model = tmp_path / "model.skr"
    assert cli.main(["index", str(tmp_path / "gallery"), "-o", str(model), "--labels-from-folders", *TINY]) == 0
    capsys.readouterr()
    return model, tmp_path / "queries"


def _auto(model, rate):
    """The threshold ImageRetriever(threshold="auto") fits on the model's gallery."""
    fitted = load(model)
    retriever = ImageRetriever("precomputed", threshold="auto", false_match_rate=rate)
    return retriever.fit(fitted.prototype_, fitted.prototype_labels_).threshold_


def test_search_marks_rejected_queries(model_and_queries, capsys):
    model, queries = model_and_queries
    files = sorted(str(p) for p in queries.rglob("*.png"))
    best = load(model).search(files, k=1)[0][:, 0]
    threshold = float(np.median(best))  # half the queries pass, ties accepted
    assert cli.main(["search", str(model), str(queries), "-k", "1", "--json", "--threshold", str(threshold)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["rejected"] for line in lines] == list(best < np.float32(threshold))
    assert all(line["threshold"] == threshold for line in lines)
    assert cli.main(["search", str(model), str(queries), "-k", "1", "--threshold", str(threshold)]) == 0
    heads = [line for line in capsys.readouterr().out.splitlines() if line.startswith("query:")]
    assert [f"no match reaches the threshold {threshold:.4f}" in h for h in heads] == list(best < np.float32(threshold))
    # auto: estimated on the model's gallery as fit would
    argv = ["search", str(model), str(queries), "-k", "1", "--json", "--threshold", "auto", "--false-match-rate", "0.2"]
    assert cli.main(argv) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[0]["threshold"] == _auto(model, 0.2)
    # without --threshold the output has no rejection fields
    assert cli.main(["search", str(model), files[0], "--json"]) == 0
    assert "rejected" not in json.loads(capsys.readouterr().out)


def test_evaluate_reports_open_set_figures(model_and_queries, capsys):
    model, queries = model_and_queries
    argv = ["evaluate", str(model), str(queries), "--labels-from-folders", "--metrics", "recall@1", "--json"]
    assert cli.main([*argv, "--threshold", "auto"]) == 0
    figures = json.loads(capsys.readouterr().out)["open_set"]
    files = sorted(str(p) for p in queries.rglob("*.png"))
    labels = np.array([p.split("/")[-2] for p in files])
    fitted = load(model)
    similarities, indices = fitted.search(files, k=1)
    best, known = similarities[:, 0], labels != "blue"
    assert figures["unknown_queries"] == 8
    assert figures["detection_eer"] == equal_error_rate(best[known], best[~known])
    expected = detection_identification_rate(
        labels, fitted.prototype_labels_[indices[:, 0]], best, gallery_labels=["green", "red"], false_alarm_rate=0.05
    )
    assert figures["dir@0.05"] == expected
    assert figures["threshold"] == _auto(model, 0.05)
    assert figures["false_match_rate"] == false_match_rate(best[~known], figures["threshold"])
    assert set(figures) >= {"false_non_match_rate", "open_set_accuracy"}
    # known-only queries: no open-set section; text mode prints the section
    known = queries.parent / "known"
    shutil.copytree(queries / "red", known / "red")
    assert cli.main([*argv[:2], str(known), *argv[3:]]) == 0
    assert "open_set" not in json.loads(capsys.readouterr().out)
    assert cli.main(argv[:-1]) == 0
    assert "open set: 8 of 14 queries have a label the gallery lacks" in capsys.readouterr().out


def test_duplicates_auto(colour_images, tmp_path, capsys):
    from PIL import Image

    images, _ = colour_images
    for n in range(0, 24, 2):
        Image.fromarray(images[n]).save(tmp_path / f"{n:02d}.png")
    Image.fromarray(images[8]).save(tmp_path / "copy.png")
    argv = ["duplicates", str(tmp_path), "--threshold", "auto", "--false-match-rate", "0.16", "--json", *TINY]
    assert cli.main(argv) == 0
    captured = capsys.readouterr()
    groups = [json.loads(line)["paths"] for line in captured.out.splitlines()]
    assert [sorted(p.split("/")[-1] for p in g) for g in groups] == [["08.png", "copy.png"]]
    assert "1 group(s) of near-identical images (similarity >= " in captured.err


@pytest.mark.parametrize("command", ["search", "duplicates"])
def test_bad_threshold_is_a_usage_error(model_and_queries, capsys, command):
    model, queries = model_and_queries
    target = [str(model), str(queries)] if command == "search" else [str(queries)]
    assert cli.main([command, *target, "--threshold", "high"]) == 2
    assert "high is not a number; give a cosine similarity in [-1, 1] (or auto)" in capsys.readouterr().err
