"""The command line with fine-tuned models, and with model files that are damaged or hostile."""

import json

import model_files
import numpy as np
import pytest
from helpers import CLI_TINY as TINY  # the tiny encoder by name

from skretrieval import cli, load
from skretrieval.heads import HEAD_NAMES
from skretrieval.metrics import retrieval_report


def _index(folders, capsys, *extra):
    model = folders / "model.skr"
    code = cli.main(["index", str(folders / "gallery"), "-o", str(model), *TINY, "--labels-from-folders", *extra])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return model, captured


def _query_files(folders):
    return sorted(str(p.resolve()) for p in (folders / "queries").rglob("*.png"))


@pytest.mark.parametrize("fine_tune", ["head", "all"])
def test_index_head_arcface_trains_a_model_search_and_evaluate_use(folders, capsys, fine_tune):
    model, _ = _index(folders, capsys, "--head", "arcface", "--fine-tune", fine_tune, "--max-epochs", "3")
    retriever = load(model)
    assert retriever.head == "arcface" and retriever.fine_tune == fine_tune and retriever.n_iter_ == 3
    assert retriever.projection_ is not None and retriever.get_params()["encoder__on_error"] == "raise"
    files = _query_files(folders)

    assert cli.main(["search", str(model), *files, "-k", "3", "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    similarities, indices = retriever.search(files, k=3)  # the Python API, by path
    assert [line["query"] for line in lines] == files
    for line, scores, rows in zip(lines, similarities, indices):
        assert [m["path"] for m in line["matches"]] == [retriever.prototype_ids_[i] for i in rows]
        np.testing.assert_allclose([m["score"] for m in line["matches"]], scores, atol=1e-6)

    metrics = "recall@1,recall@5,map@3,accuracy"
    argv = ["evaluate", str(model), str(folders / "queries"), "--labels-from-folders", "--json", "--metrics", metrics]
    assert cli.main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    labels = [f.split("/")[-2] for f in files]
    expected = retrieval_report(retriever, files, labels, metrics.split(","), output_dict=True)
    assert report == pytest.approx(expected, abs=1e-12) and report["recall@1"] == 1.0


def test_head_needs_labels_and_names_the_heads(folders, capsys):
    code = cli.main(["index", str(folders / "gallery"), "-o", str(folders / "m.skr"), *TINY, "--head", "arcface"])
    assert code == 2 and "--head trains on the gallery labels: pass --labels-from-folders" in capsys.readouterr().err
    assert not (folders / "m.skr").exists()
    assert cli.HEAD_CHOICES == HEAD_NAMES
    assert cli.main(["index", str(folders / "gallery"), "-o", str(folders / "m.skr"), "--head", "cosface"]) == 2


def _damage(model, how):
    contents = model_files.entries(model)
    if how == "deflate bomb":
        model_files.deflate_bomb(model, contents, "arrays.safetensors", 1 << 30)
    elif how == "truncated":
        data = model.read_bytes()
        model.write_bytes(data[: len(data) // 2])
    elif how == "compressed entry":
        model_files.rewrite(model, contents, compressed={"weights.safetensors"})
    elif how == "renamed entry":
        model_files.rewrite(model, {("x_.npy" if k == "classes_.npy" else k): v for k, v in contents.items()})
    elif how == "added entry":
        model_files.rewrite(model, {**contents, "run.py": b"import os"})
    elif how == "flipped header byte":
        data = bytearray(model.read_bytes())
        data[data.index(b"NUMPY") + 12] ^= 0x55  # inside the first .npy header: the CRC disagrees
        model.write_bytes(bytes(data))
    return {"deflate bomb": "is compressed", "truncated": "no end-of-directory record",
            "compressed entry": "is compressed", "renamed entry": "are missing",
            "added entry": "unexpected entry 'run.py'", "flipped header byte": "CRC"}[how]


@pytest.mark.parametrize("command", ["search", "evaluate"])
@pytest.mark.parametrize(
    "how", ["deflate bomb", "truncated", "compressed entry", "renamed entry", "added entry", "flipped header byte"]
)
def test_damaged_model_file_is_one_line_error(folders, capsys, command, how):
    model, _ = _index(folders, capsys)
    reason = _damage(model, how)
    argv = {"search": ["search", str(model), str(folders / "queries")],
            "evaluate": ["evaluate", str(model), str(folders / "queries"), "--labels-from-folders"]}[command]
    assert cli.main(argv) == 1
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and captured.out == ""
    error, hint = captured.err.splitlines()
    assert error.startswith(f"skretrieval {command}: error: '{model}' is not a skretrieval model file or is damaged: ")
    assert reason in error and hint.startswith("hint: ")


def test_max_image_pixels_option_sets_and_restores_the_limit(folders, capsys):
    from PIL import Image

    model, _ = _index(folders, capsys)
    query = str(folders / "queries" / "red" / "06.png")  # 12 x 12 = 144 pixels
    default = Image.MAX_IMAGE_PIXELS
    assert cli.main(["search", str(model), query, "--max-image-pixels", "100", "--on-error", "raise"]) == 1
    error = capsys.readouterr().err.splitlines()[-2]
    assert "PIL.Image.MAX_IMAGE_PIXELS (100 pixels)" in error and "--max-image-pixels n" in error
    assert Image.MAX_IMAGE_PIXELS == default
    assert cli.main(["search", str(model), query, "--max-image-pixels", "144", "-k", "1"]) == 0
    assert "06.png" in capsys.readouterr().out
    code = cli.main(["index", str(folders / "gallery"), "-o", str(model), *TINY, "--max-image-pixels", "100"])
    assert code == 1 and "--max-image-pixels" in capsys.readouterr().err
    assert cli.main(["search", str(model), query, "--max-image-pixels", "0"]) == 2
