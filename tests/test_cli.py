"""The command line, through ``main([...])`` (and once through ``python -m skretrieval``)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import CLI_TINY as TINY  # the tiny encoder by name

from skretrieval import ImageEncoder, cli


def _index(folders, capsys, *extra):
    model = folders / "model.skr"
    code = cli.main(["index", str(folders / "gallery"), "-o", str(model), *TINY, *extra])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return model, captured


def test_index_then_search_table_json_and_plot(folders, capsys):
    model, captured = _index(folders, capsys, "--labels-from-folders")
    assert "indexed 18 images (11-d, 3 labels)" in captured.out
    assert "images/s" in captured.err

    query = folders / "queries" / "green" / "14.png"
    assert cli.main(["search", str(model), str(query), "-k", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"query: {query}"
    rows = [line.split() for line in out[2:]]
    assert [r[0] for r in rows] == ["1", "2", "3"]
    assert all(r[2] == "green" and "/gallery/green/" in r[3] for r in rows)
    scores = [float(r[1]) for r in rows]
    assert scores == sorted(scores, reverse=True)

    plot = folders / "results.png"
    queries = folders / "queries" / "red"
    assert cli.main(["search", str(model), str(queries), str(query), "-k", "2", "--json", "--plot", str(plot)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [len(line["matches"]) for line in lines] == [2, 2, 2]
    assert [line["matches"][0]["label"] for line in lines] == ["red", "red", "green"]
    assert lines[0]["matches"][0]["rank"] == 1 and isinstance(lines[0]["matches"][0]["score"], float)
    from PIL import Image

    assert Image.open(plot).size[0] > 200


def test_search_without_labels_and_index_speed_message(folders, capsys):
    model, _ = _index(folders, capsys)
    query = folders / "queries" / "blue" / "22.png"
    assert cli.main(["search", str(model), str(query), "-k", "1", "--json"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert json.loads(line)["matches"][0]["label"] is None
    assert cli.main(["evaluate", str(model), str(folders / "queries"), "--labels-from-folders"]) == 1
    assert "indexed without labels" in capsys.readouterr().err


def test_duplicates_reports_the_copied_image(colour_images, tmp_path, capsys):
    from PIL import Image

    images, _ = colour_images
    for n in (0, 8, 16):  # a red, a green and a blue image, and a copy of the green one
        Image.fromarray(images[n]).save(tmp_path / f"{n:02d}.png")
    (tmp_path / "sub").mkdir()
    Image.fromarray(images[8]).save(tmp_path / "sub" / "copy.png")
    assert cli.main(["duplicates", str(tmp_path), "--threshold", "0.99999", *TINY]) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines() == [
        "group 1: 2 images", f"  {tmp_path / '08.png'}", f"  {tmp_path / 'sub' / 'copy.png'}",
    ]
    assert "1 group(s) of near-identical images" in captured.err
    assert cli.main(["duplicates", str(tmp_path), "--threshold", "0.99999", "--json", *TINY]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert [Path(p).name for p in json.loads(line)["paths"]] == ["08.png", "copy.png"]


def test_model_file_from_a_newer_version_or_not_a_model(folders, capsys):
    import zipfile

    model, _ = _index(folders, capsys, "--labels-from-folders")
    newer = folders / "newer.skr"
    with zipfile.ZipFile(model) as source, zipfile.ZipFile(newer, "w") as target:
        for item in source.namelist():
            data = source.read(item)
            if item == "meta.json":
                meta = json.loads(data)
                meta["format_version"] = 999
                data = json.dumps(meta)
            target.writestr(item, data)
    query = str(folders / "queries" / "red" / "06.png")
    assert cli.main(["search", str(newer), query]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "format_version 999 is not supported" in err
    assert cli.main(["search", str(folders / "queries" / "red" / "06.png"), query]) == 1
    assert "is not a skretrieval model file" in capsys.readouterr().err


def test_evaluate_matches_retrieval_report(folders, capsys):
    model, _ = _index(folders, capsys, "--labels-from-folders")
    code = cli.main(
        ["evaluate", str(model), str(folders / "queries"), "--labels-from-folders",
         "--metrics", "recall@1,map@3,accuracy", "--json"]
    )
    result = json.loads(capsys.readouterr().out)
    assert code == 0 and list(result) == ["recall@1", "map@3", "accuracy"]
    assert result["recall@1"] == 1.0  # colours are well separated

    assert cli.main(["evaluate", str(model), str(folders / "queries"), "--labels-from-folders"]) == 0
    assert "recall@1" in capsys.readouterr().out

    assert cli.main(["evaluate", str(model), str(folders / "queries")]) == 2
    assert "--labels-from-folders" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["search", "{tmp}/missing.skr", "{tmp}/q.png"], "does not exist"),
        (["search", "{model}", "{tmp}/nope.png"], "does not exist"),
        (["search", "{model}", "{tmp}/broken.png"], "cannot read image"),
        (["search", "{model}", "{tmp}/queries", "-k", "50"], "lower -k,"),
        (["index", "{tmp}/nowhere", "-o", "{tmp}/m.skr", *TINY], "is not a folder"),
        (["index", "{tmp}/gallery", "-o", "{tmp}/no/m.skr", *TINY], "does not exist"),
        (["index", "{tmp}/gallery", "-o", "{tmp}/m.skr", "--encoder", "no_such_encoder"], "Unknown encoder"),
        (["evaluate", "{model}", "{tmp}/queries", "--labels-from-folders", "--metrics", "recall@x"], "recall@x"),
    ],
)
def test_user_mistakes_exit_1_with_one_line(folders, capsys, argv, message):
    model, _ = _index(folders, capsys, "--labels-from-folders")
    (folders / "broken.png").write_bytes(b"not an image")
    argv = [a.format(tmp=folders, model=model) for a in argv]
    assert cli.main(argv) == 1
    full = capsys.readouterr().err
    assert "Traceback" not in full
    err = full.splitlines()[-2:]  # after the progress bar, if any
    assert err[0].startswith(f"skretrieval {argv[0]}: error: ") and message in err[0]
    assert err[1].startswith("hint: ")


def _truncated_jpeg(path, size=16):
    """Write the first half of a real JPEG: PIL opens the header, decoding fails."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, "JPEG")
    data = buffer.getvalue()
    path.write_bytes(data[: len(data) // 2])
    return path


def test_index_skips_an_unreadable_image_by_default(folders, capsys):
    from skretrieval import load

    bad = _truncated_jpeg(folders / "gallery" / "red" / "00_truncated.jpg")
    model, captured = _index(folders, capsys, "--labels-from-folders")
    assert model.is_file()
    assert "indexed 18 images (11-d, 3 labels, 1 skipped)" in captured.out
    assert "encoded 18 images" in captured.err and "Traceback" not in captured.err
    warnings = [line for line in captured.err.splitlines() if "warning:" in line]
    assert len(warnings) == 2 and str(bad) in warnings[0] and "cannot read image" in warnings[0]
    assert warnings[1].endswith("skipped 1 unreadable image file(s) of 19")
    retriever = load(model)
    assert str(bad) not in set(retriever.prototype_ids_) and len(retriever.prototype_ids_) == 18
    assert [path for _, path, _ in retriever.skipped_] == [str(bad)]
    assert retriever.get_params()["encoder__on_error"] == "raise"  # the model file queries as any other

    # ... and search still refuses an unreadable query instead of answering with row -1.
    assert cli.main(["search", str(model), str(bad)]) == 1
    assert "cannot read image" in capsys.readouterr().err


def test_index_skip_counts_and_warn_lists_the_first_few(folders, capsys):
    bad = [_truncated_jpeg(folders / "gallery" / "blue" / f"bad{n:02d}.jpg") for n in range(12)]
    _, captured = _index(folders, capsys, "--on-error", "skip")
    assert "indexed 18 images (11-d, 12 skipped)" in captured.out
    assert not any(str(path) in captured.err for path in bad)
    assert "skipped 12 unreadable image file(s) of 30" in captured.err

    _, captured = _index(folders, capsys)
    warnings = [line for line in captured.err.splitlines() if "warning:" in line]
    assert [str(path) in line for path, line in zip(bad[:10], warnings)] == [True] * 10
    assert len(warnings) == 12 and not any(str(path) in warnings[10] for path in bad)
    assert warnings[10].endswith("... and 2 more")
    assert warnings[11].endswith("skipped 12 unreadable image file(s) of 30")


def test_index_on_error_raise_exits_1_with_one_line(folders, capsys):
    (folders / "gallery" / "red" / "zz.png").write_bytes(b"\x89PNG broken")
    argv = ["index", str(folders / "gallery"), "-o", str(folders / "m.skr"), "--on-error", "raise", *TINY]
    assert cli.main(argv) == 1
    full = capsys.readouterr().err
    assert "Traceback" not in full and not (folders / "m.skr").exists()
    (error,) = [line for line in full.splitlines() if "error:" in line]
    message = error[error.index("skretrieval index: error: "):]  # the progress bar may precede it
    assert message.startswith("skretrieval index: error: cannot read image") and "zz.png" in message
    assert full.splitlines()[-1].startswith("hint: ")


def test_every_gallery_image_unreadable_exits_1(tmp_path, capsys):
    _truncated_jpeg(tmp_path / "a.jpg")
    assert cli.main(["index", str(tmp_path), "-o", str(tmp_path / "m.skr"), *TINY]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "were skipped as unreadable" in err
    assert not (tmp_path / "m.skr").exists()


def test_duplicates_skips_an_unreadable_image(colour_images, tmp_path, capsys):
    from PIL import Image

    images, _ = colour_images
    bad = _truncated_jpeg(tmp_path / "00_bad.jpg")  # sorts first: the gallery rows shift by one
    for n in (0, 8, 16):
        Image.fromarray(images[n]).save(tmp_path / f"{n:02d}.png")
    Image.fromarray(images[16]).save(tmp_path / "copy.png")
    assert cli.main(["duplicates", str(tmp_path), "--threshold", "0.99999", *TINY]) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines() == ["group 1: 2 images", f"  {tmp_path / '16.png'}", f"  {tmp_path / 'copy.png'}"]
    assert str(bad) in captured.err and "skipped 1 unreadable image file(s) of 5" in captured.err

    assert cli.main(["duplicates", str(tmp_path), "--on-error", "raise", *TINY]) == 1
    assert "00_bad.jpg" in capsys.readouterr().err


def test_evaluate_skips_an_unreadable_query(folders, capsys):
    model, _ = _index(folders, capsys, "--labels-from-folders")
    bad = _truncated_jpeg(folders / "queries" / "green" / "bad.jpg")
    argv = ["evaluate", str(model), str(folders / "queries"), "--labels-from-folders", "--json"]
    assert cli.main([*argv, "--metrics", "recall@1,accuracy"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out) == {"recall@1": 1.0, "accuracy": 1.0}  # the 6 readable queries
    assert str(bad) in captured.err and "skipped 1 unreadable query image file(s) of 7" in captured.err

    assert cli.main([*argv, "--on-error", "raise"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "bad.jpg" in err.splitlines()[-2]


def test_usage_errors_exit_2_and_help_0(capsys):
    assert cli.main([]) == 2
    assert cli.main(["search"]) == 2
    assert cli.main(["search", "m.skr", "q.png", "-k", "many"]) == 2
    capsys.readouterr()
    for command in ["index", "search", "evaluate", "duplicates", "demo"]:
        assert cli.main([command, "--help"]) == 0
        assert f"usage: skretrieval {command}" in capsys.readouterr().out


def test_python_m_skretrieval_help():
    result = subprocess.run(
        [sys.executable, "-m", "skretrieval", "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0
    for command in ["demo", "index", "search", "evaluate", "duplicates"]:
        assert command in result.stdout


def test_demo_still_runs(capsys):
    assert cli.main(["demo", "--encoder", "cli_tiny", "--device", "cpu"]) == 0
    assert "recall@1" in capsys.readouterr().out


def test_speed_options_reach_the_model_and_keep_its_answers(folders, capsys):
    plain, _ = _index(folders, capsys)
    fast_model = folders / "fast.skr"
    code = cli.main([
        "index", str(folders / "gallery"), "-o", str(fast_model), *TINY,
        "--n-jobs", "2", "--compile", "freeze", "--precision", "fp32",
    ])
    assert code == 0, capsys.readouterr().err
    from skretrieval import load

    fast, reference = load(fast_model), load(plain)
    assert fast.get_params()["encoder__compile"] == "freeze" and fast.get_params()["encoder__n_jobs"] == 2
    np.testing.assert_allclose(fast.prototype_, reference.prototype_, rtol=1e-5, atol=1e-6)
    capsys.readouterr()
    assert cli.main(["index", str(folders / "gallery"), "-o", str(fast_model), *TINY, "--compile", "jit"]) == 2
    assert "invalid choice: 'jit'" in capsys.readouterr().err


def test_index_reads_every_format_below_the_folder(colour_images, tmp_path, capsys):
    """jpg, png, webp, bmp and tiff files at any depth are indexed; other files are not."""
    from PIL import Image

    from skretrieval import load

    images, _ = colour_images
    written = []
    for n, name in enumerate(["a.jpg", "b.JPEG", "deep/c.png", "deep/er/d.webp", "e.bmp", "deep/f.tif", "g.tiff"]):
        path = tmp_path / "gallery" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[n]).save(path)
        written.append(str(path.resolve()))
    (tmp_path / "gallery" / "notes.txt").write_text("not an image")
    model = tmp_path / "model.skr"
    assert cli.main(["index", str(tmp_path / "gallery"), "-o", str(model), *TINY]) == 0
    assert "indexed 7 images" in capsys.readouterr().out
    retriever = load(model)
    assert sorted(retriever.prototype_ids_) == sorted(written)
    # each file is its own best match: a query reads it as the index did
    for path in written:
        own = retriever.kneighbors([path], n_neighbors=1, return_distance=False)[0, 0]
        assert retriever.prototype_ids_[own] == path


# ------------------------------------------------------------------------------------------
# The command line as a new user met it (issue 13)


def _error_line(err: str) -> str:
    """The ``skretrieval COMMAND: error:`` line (a progress bar may precede it on its line)."""
    (line,) = [line for line in err.splitlines() if ": error: " in line]
    return line[line.index("skretrieval "):]


def _read_only_folder(tmp_path):
    """A folder nobody may write to: chmod for a user; root ignores that, and sysfs refuses it."""
    import os

    if os.geteuid() == 0:
        return Path("/sys")
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(0o555)
    return folder


@pytest.mark.parametrize(
    "output, problem",
    [
        ("{tmp}/gallery", "is a folder; give the model file to write"),
        ("{tmp}/no/such/m.skr", "does not exist; create it first"),
        ("{tmp}/gallery/red/00.png/m.skr", "does not exist"),  # the "folder" is a file
        ("{read_only}/m.skr", "cannot be written: Permission denied"),
    ],
)
def test_index_output_is_checked_before_encoding(folders, capsys, output, problem):
    output = output.format(tmp=folders, read_only=_read_only_folder(folders))
    assert cli.main(["index", str(folders / "gallery"), "-o", output, *TINY]) == 1
    err = capsys.readouterr().err
    assert "encoded" not in err and "encoding" not in err  # failed before any image was encoded
    lines = err.splitlines()
    assert len(lines) == 2 and lines[1].startswith("hint: ")
    assert lines[0].startswith(f"skretrieval index: error: -o/--output {output!r}") and problem in lines[0]


@pytest.mark.parametrize(
    "argv, option, parameter",
    [
        (["index", "{tmp}/gallery", "-o", "{tmp}/m.skr", *TINY, "--batch-size", "0"], "--batch-size must be an int", "batch_size"),
        (["duplicates", "{tmp}/gallery", *TINY, "--n-jobs", "0"], "--n-jobs", "n_jobs"),
        (["index", "{tmp}/gallery", "-o", "{tmp}/m.skr", "--weights", "bogus"], "--weights 'bogus' is not available", "weights="),
        (["index", "{tmp}/gallery", "-o", "{tmp}/m.skr", *TINY, "--image-size", "0"], "--image-size must be a positive int", "Preprocessing"),
        (["search", "{model}", "{tmp}/queries", "-k", "50"], "50 neighbours requested (-k), but", "topk"),
        (["search", "{model}", "{tmp}/queries", "-k", "0"], "-k must be a positive int or -1", "n_neighbors"),
    ],
)
def test_errors_name_the_cli_options_not_python_parameters(folders, capsys, argv, option, parameter):
    model, _ = _index(folders, capsys)
    argv = [a.format(tmp=folders, model=model) for a in argv]
    assert cli.main(argv) == 1
    line = _error_line(capsys.readouterr().err)
    assert option in line and parameter not in line, line


@pytest.mark.parametrize("threshold", ["1.5", "-1.01", "nan", "high"])
def test_duplicates_threshold_outside_its_range_is_a_usage_error(folders, capsys, threshold):
    assert cli.main(["duplicates", str(folders / "gallery"), "--threshold", threshold, *TINY]) == 2
    err = capsys.readouterr().err
    assert "encoded" not in err and "encoding" not in err
    assert err.splitlines()[-1].startswith(f"skretrieval duplicates: error: argument --threshold: {threshold}")
    assert "[-1, 1]" in err.splitlines()[-1]


def test_duplicates_threshold_bounds_are_accepted(folders, capsys):
    assert cli.main(["duplicates", str(folders / "gallery"), "--threshold", "1", *TINY]) == 0
    assert cli.main(["duplicates", str(folders / "gallery"), "--threshold", "-1", "--json", *TINY]) == 0
    (line,) = capsys.readouterr().out.splitlines()  # every image is at least -1 similar to every other
    assert len(json.loads(line)["paths"]) == 18


def test_search_takes_on_error(folders, capsys):
    model, _ = _index(folders, capsys, "--labels-from-folders")
    bad = _truncated_jpeg(folders / "queries" / "blue" / "bad.jpg")
    queries = str(folders / "queries")
    assert cli.main(["search", str(model), queries, "-k", "1", "--json"]) == 0  # default: warn
    captured = capsys.readouterr()
    lines = [json.loads(line) for line in captured.out.splitlines()]
    assert len(lines) == 6 and str(bad) not in {line["query"] for line in lines}
    assert all(line["matches"][0]["label"] == Path(line["query"]).parent.name for line in lines)
    warnings = [line for line in captured.err.splitlines() if "warning:" in line]
    assert len(warnings) == 2 and str(bad) in warnings[0]
    assert warnings[1].endswith("skipped 1 unreadable query image file(s) of 7")

    assert cli.main(["search", str(model), queries, "-k", "1", "--on-error", "skip"]) == 0
    captured = capsys.readouterr()
    assert str(bad) not in captured.err + captured.out and "skipped 1 unreadable" in captured.err

    assert cli.main(["search", str(model), queries, "--on-error", "raise"]) == 1
    assert "bad.jpg" in _error_line(capsys.readouterr().err)
    assert cli.main(["search", str(model), str(bad)]) == 1
    assert "all 1 query image(s)" in _error_line(capsys.readouterr().err)


def test_hidden_files_and_folders_are_not_indexed(colour_images, tmp_path, capsys):
    """Real images under hidden names are left out, by the CLI and by a folder given to fit."""
    from PIL import Image

    from skretrieval import ImageRetriever, load

    images, _ = colour_images
    names = ["a.png", "sub/b.png", ".thumbs/a.png", "._a.png", "sub/.c.png", "sub/.cache/d.png"]
    for image, name in zip(images, names):
        path = tmp_path / "gallery" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path, "PNG")
    model = tmp_path / "m.skr"
    assert cli.main(["index", str(tmp_path / "gallery"), "-o", str(model), *TINY]) == 0
    expected = [str(tmp_path / "gallery" / name) for name in ["a.png", "sub/b.png"]]
    assert list(load(model).prototype_ids_) == expected
    python = ImageRetriever(ImageEncoder("cli_tiny", device="cpu")).fit(str(tmp_path / "gallery"))
    assert list(python.prototype_ids_) == expected


def test_labels_from_folders_are_the_first_folder_under_the_root(colour_images, tmp_path, capsys):
    """root/red/deep/x.png is "red", as torchvision's ImageFolder; Python gets the same labels."""
    from PIL import Image

    from skretrieval import load
    from skretrieval.io import list_labelled_images

    images, labels = colour_images
    colours = np.array(["red", "green", "blue"])[labels]
    for n, (image, colour) in enumerate(zip(images, colours)):
        sub = ["", "light/", "light/very/"][n % 3]  # shared sub-folder names across classes
        path = tmp_path / "gallery" / colour / f"{sub}{n:02d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path)
    model = tmp_path / "m.skr"
    assert cli.main(["index", str(tmp_path / "gallery"), "-o", str(model), "--labels-from-folders", *TINY]) == 0
    assert "3 labels" in capsys.readouterr().out
    retriever = load(model)
    by_file = dict(zip(retriever.prototype_ids_, retriever.prototype_labels_))
    assert by_file == {str(tmp_path / "gallery" / c / f"{s}{n:02d}.png"): c
                       for n, c, s in zip(range(24), colours, ["", "light/", "light/very/"] * 8)}
    files, python_labels = list_labelled_images(tmp_path / "gallery")
    assert files == list(retriever.prototype_ids_)
    assert list(python_labels) == list(retriever.prototype_labels_)

    # an image outside any class folder has no label: said, not guessed
    Image.fromarray(images[0]).save(tmp_path / "gallery" / "stray.png")
    assert cli.main(["index", str(tmp_path / "gallery"), "-o", str(model), "--labels-from-folders", *TINY]) == 1
    line = _error_line(capsys.readouterr().err)
    assert "'stray.png'" in line and "outside any class folder" in line


def test_version_and_bare_command_prints_the_help(capsys):
    import skretrieval

    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out == f"skretrieval {skretrieval.__version__}\n"
    assert cli.main([]) == 2  # no command is a usage error (argparse's code), answered with the help
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == cli.build_parser().format_help()
    assert "Encode a folder of images into a model file." in captured.err


_HELP_WITHOUT_THE_PACKAGE = """
import importlib.util, sys, types
# skretrieval/cli.py loaded under a bare package (its __init__ not run), as a lazy __init__ would
package = types.ModuleType("skretrieval")
package.__path__, package.__version__ = [sys.argv[1]], "0"
sys.modules["skretrieval"] = package
spec = importlib.util.spec_from_file_location("skretrieval.cli", sys.argv[1] + "/cli.py")
cli = importlib.util.module_from_spec(spec)
sys.modules["skretrieval.cli"] = cli
spec.loader.exec_module(cli)
assert cli.main(["--help"]) == 0 and cli.main(["index", "--help"]) == 0
heavy = sorted(name for name in ("torch", "sklearn", "numpy", "PIL") if name in sys.modules)
print("heavy:", heavy)
"""


def test_cli_module_parses_help_without_importing_torch():
    import skretrieval

    package = str(Path(skretrieval.__file__).parent)
    result = subprocess.run(
        [sys.executable, "-c", _HELP_WITHOUT_THE_PACKAGE, package], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "heavy: []"


def test_help_does_not_import_torch():
    """`skretrieval --help` (the package, its CLI, the parsers) imports no torch or sklearn."""
    code = (
        "import sys, runpy\n"
        "sys.argv = ['skretrieval', '--help']\n"
        "try:\n    runpy.run_module('skretrieval', run_name='__main__')\n"
        "except SystemExit as exit:\n    assert exit.code == 0\n"
        "print('heavy:', sorted(m for m in ('torch', 'sklearn', 'numpy') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "usage: skretrieval" in result.stdout
    assert result.stdout.splitlines()[-1] == "heavy: []"


def test_progress_bar_ends_at_its_total_when_files_were_skipped(folders, capsys, monkeypatch):
    import tqdm.auto

    ends = []

    class RecordingBar(tqdm.auto.tqdm):
        def close(self):
            ends.append((self.desc, self.n, self.total))
            super().close()

    monkeypatch.setattr(tqdm.auto, "tqdm", RecordingBar)
    _truncated_jpeg(folders / "gallery" / "blue" / "bad.jpg")  # in the middle of the files
    _truncated_jpeg(folders / "gallery" / "red" / "zz_bad.jpg")  # the last file: after the last batch
    _index(folders, capsys, "--batch-size", "4")
    assert set(ends) == {("encoding", 20, 20)}  # (closed by its context and again by tqdm itself)


def test_duplicates_shows_the_scores(colour_images, tmp_path, capsys):
    """Each image's similarity to its nearest other image, against numpy on the same features."""
    from PIL import Image

    from skretrieval import ImageRetriever

    images, _ = colour_images
    for n in range(8, 16):  # the greens: near-identical to the tiny encoder
        Image.fromarray(images[n]).save(tmp_path / f"{n:02d}.png")
    Image.fromarray(images[0]).save(tmp_path / "red.png")
    files = sorted(str(p) for p in tmp_path.glob("*.png"))
    features = ImageRetriever(ImageEncoder("cli_tiny", device="cpu")).fit(files).prototype_
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    cosine = unit @ unit.T
    np.fill_diagonal(cosine, -np.inf)
    nearest = cosine.max(axis=1)
    threshold = float(np.sort(nearest[:-1])[0]) - 1e-4  # every green links; red does not
    assert nearest[-1] < threshold

    argv = ["duplicates", str(tmp_path), "--threshold", f"{threshold:.6f}", "--scores", *TINY]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "group 1: 8 images" and len(out) == 9
    rows = [line.split() for line in out[1:]]
    assert [path for _, path in rows] == files[:-1]
    np.testing.assert_allclose([float(score) for score, _ in rows], nearest[:-1], atol=6e-5)

    assert cli.main([*argv, "--json"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    group = json.loads(line)
    assert group["paths"] == files[:-1]
    np.testing.assert_allclose(group["scores"], nearest[:-1], atol=1e-5)


def test_duplicates_against_a_model(folders, capsys):
    """New images against the model's gallery, encoded with the model's encoder; numpy reference."""
    import shutil

    from PIL import Image

    from skretrieval import load

    model, _ = _index(folders, capsys)
    new = folders / "new"
    new.mkdir()
    original = folders / "gallery" / "green" / "08.png"
    shutil.copy(original, new / "a_copy.png")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(new / "b_noise.png")
    bad = _truncated_jpeg(new / "c_bad.jpg")
    argv = ["duplicates", str(new), "--against", str(model), "--threshold", "0.99999"]
    assert cli.main([*argv, "--scores"]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0] == f"{new / 'a_copy.png'}: {len(lines) - 1} gallery image(s)"
    score, path = lines[1].split()
    assert path == str(original) and float(score) >= 0.99999
    assert str(bad) in captured.err and "1 of 2 image(s) duplicate images of" in captured.err

    retriever = load(model)  # the same matches and scores as the Python API and numpy
    features = retriever.transform([str(new / "a_copy.png")])
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    cosine = (unit(features) @ unit(retriever.prototype_).T)[0]
    expected = [str(retriever.prototype_ids_[i]) for i in retriever.find_duplicates(features, 0.99999, embedded=True)[0]]
    assert expected == [str(p) for p in np.asarray(retriever.prototype_ids_)[np.argsort(-cosine, kind="stable")][: len(expected)]]
    assert cli.main([*argv, "--json", "--scores"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    line = json.loads(line)
    assert line["query"] == str(new / "a_copy.png") and line["paths"] == expected
    np.testing.assert_allclose(line["scores"], np.sort(cosine)[::-1][: len(expected)], atol=1e-5)

    assert cli.main([*argv, "--list-removable"]) == 0  # the new copy, never the gallery's image
    captured = capsys.readouterr()
    assert captured.out.splitlines() == [str(new / "a_copy.png")] and "nothing was deleted" in captured.err
    assert (new / "a_copy.png").exists() and original.exists()


def test_duplicates_list_removable_and_keep(colour_images, tmp_path, capsys):
    from PIL import Image

    images, _ = colour_images
    for n in (0, 8, 16):
        Image.fromarray(images[n]).save(tmp_path / f"{n:02d}.png")
    (tmp_path / "sub").mkdir()
    Image.fromarray(images[8]).save(tmp_path / "sub" / "copy.bmp")  # the same pixels, a larger file
    argv = ["duplicates", str(tmp_path), "--threshold", "0.99999", "--list-removable", *TINY]
    assert cli.main(argv) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines() == [str(tmp_path / "sub" / "copy.bmp")]  # the first path is kept
    assert "1 file(s) to remove, one kept in each of 1 group(s) (--keep first); nothing was deleted" in captured.err
    assert cli.main([*argv, "--keep", "largest"]) == 0
    assert capsys.readouterr().out.splitlines() == [str(tmp_path / "08.png")]
    assert cli.main([*argv, "--keep", "smallest", "--json"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert json.loads(line) == {"group": 1, "keep": str(tmp_path / "08.png"), "remove": [str(tmp_path / "sub" / "copy.bmp")]}
    assert all(p.exists() for p in [tmp_path / "08.png", tmp_path / "sub" / "copy.bmp"])


@pytest.mark.parametrize(
    ("extra", "code", "message"),
    [
        (["--keep", "largest"], 2, "--keep chooses the image kept in each group of --list-removable"),
        (["--against", "{tmp}/gallery/model.skr", "--list-removable", "--keep", "first"], 2, "--keep applies to groups within DIR"),
        (["--against", "{tmp}/model.skr", "--encoder", "cli_tiny"], 2, "--encoder does not apply"),
        (["--against", "{tmp}/missing.skr"], 1, "model file"),
    ],
)
def test_duplicates_option_errors(folders, capsys, extra, code, message):
    model, _ = _index(folders, capsys)
    argv = ["duplicates", str(folders / "gallery"), *(a.replace("{tmp}", str(folders)) for a in extra)]
    assert cli.main(argv) == code
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert err.splitlines()[0].startswith("skretrieval duplicates: error:")
