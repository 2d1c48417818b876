"""
Find near-duplicate images
==========================

Collections of photos fill up with near-duplicates: the same picture re-saved at another
JPEG quality, cropped a few pixels differently, or brightened. This example plants such
copies among crops of scikit-learn's two sample photos, writes everything to a folder,
lets :meth:`~skretrieval.ImageRetriever.find_duplicates` group the images that look
near-identical, and checks the groups against the planted truth.
"""

# %%
# A folder with planted near-duplicates
# -------------------------------------
# ``load_sample_images`` holds two 427x640 photographs. Cut each into a grid of 128-pixel
# crops (the originals), then derive one or two altered copies from every other crop:
#
# * ``shift``: the same region cropped 3 pixels lower and 4 to the right;
# * ``jpeg``: the original re-compressed at JPEG quality 50;
# * ``bright``: the original with its brightness raised by 10%.
#
# Every image is written as a JPEG file with a random name, so the file names give nothing
# away. ``truth`` maps each file to the crop it came from, ``kinds`` to how it was made.
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance
from sklearn.datasets import load_sample_images

rng = np.random.default_rng(0)
folder = Path(tempfile.mkdtemp())
truth = {}  # file name -> id of the original crop
kinds = {}  # file name -> "original" or the alteration
size = 128


def save(image, origin, kind="original", quality=90):
    name = f"{rng.integers(16**8):08x}.jpg"
    image.save(folder / name, quality=quality)
    truth[name], kinds[name] = origin, kind


alterations = ["shift", "jpeg", "bright"]
n_planted = 0
for photo_index, photo in enumerate(load_sample_images().images):
    for row, top in enumerate(range(10, photo.shape[0] - size - 10, size + 10)):
        for column, left in enumerate(range(10, photo.shape[1] - size - 10, size + 10)):
            origin = f"photo {photo_index}, crop ({row}, {column})"
            original = Image.fromarray(photo[top : top + size, left : left + size])
            save(original, origin)
            if (row + column) % 2:
                continue
            for kind in rng.choice(alterations, size=rng.integers(1, 3), replace=False):
                n_planted += 1
                if kind == "shift":
                    save(Image.fromarray(photo[top + 3 : top + 3 + size, left + 4 : left + 4 + size]), origin, kind)
                elif kind == "jpeg":
                    save(original, origin, kind, quality=50)
                else:
                    save(ImageEnhance.Brightness(original).enhance(1.10), origin, kind)
print(f"{len(truth)} images in {folder}, {n_planted} of them planted near-duplicates")

# %%
# Encode the folder and group
# ---------------------------
# ``fit`` accepts a folder and records each image's path in ``prototype_ids_``.
# ``find_duplicates`` links every two images whose cosine similarity reaches
# ``min_similarity`` and returns the connected groups of linked images (so a group can
# also form through a chain of links). Images without any near-duplicate are left out.
from skretrieval import ImageEncoder, ImageRetriever

retriever = ImageRetriever(ImageEncoder(preprocessing={"size": 128}, device="cpu")).fit(folder)
names = np.array([Path(path).name for path in retriever.prototype_ids_])
groups = retriever.find_duplicates(min_similarity=0.9)
for group in groups[:5]:
    print(f"group of {len(group)}: {sorted({truth[name] for name in names[group]})}")
print(f"... {len(groups)} groups in all")

# %%
# Compared with the planted truth
# -------------------------------
# Count pairs: two images form a true pair when they come from the same original crop, and
# a found pair when they share a group. Precision is the share of found pairs that are
# true; recall is the share of true pairs that were found.
from itertools import combinations


def pairs_of(groups_of_names):
    return {frozenset(pair) for group in groups_of_names for pair in combinations(group, 2)}


by_origin = {}
for name, origin in truth.items():
    by_origin.setdefault(origin, []).append(name)
true_pairs = pairs_of(by_origin.values())


def precision_recall(groups):
    found = pairs_of([names[group] for group in groups])
    correct = len(found & true_pairs)
    return correct / max(len(found), 1), correct / len(true_pairs), len(found)


precision, recall, n_found = precision_recall(groups)
print(f"{len(true_pairs)} true pairs, {n_found} found: precision {precision:.2f}, recall {recall:.2f}")

# %%
# Which pairs were missed? The encoder was trained to recognise objects in ImageNet
# photographs, not to match copies, so some alterations move its features more than others:
missed = true_pairs - pairs_of([names[group] for group in groups])
for pair in sorted(missed, key=sorted):
    print(" vs ".join(sorted(kinds[name] for name in pair)), "of", truth[next(iter(pair))])

# %%
# The threshold
# -------------
# ``min_similarity`` trades precision for recall: lower, more altered copies are caught,
# but different crops of similar texture (sky, a petal) start to link too, and through
# chains whole groups merge. The features are computed once by ``fit``; each threshold
# only re-runs the search, so a sweep is cheap. On your own images, pick the threshold on a
# sample you have labelled, as here.
import matplotlib.pyplot as plt

thresholds = np.round(np.arange(0.70, 0.99, 0.02), 2)
curves = np.array([precision_recall(retriever.find_duplicates(min_similarity=t))[:2] for t in thresholds])
for t, (p, r) in zip(thresholds, curves):
    print(f"min_similarity {t:.2f}: precision {p:.2f}, recall {r:.2f}")

fig, ax = plt.subplots(figsize=(5, 3.5))
ax.plot(thresholds, curves[:, 0], marker="o", label="precision")
ax.plot(thresholds, curves[:, 1], marker="s", label="recall")
ax.set_xlabel("min_similarity")
ax.set_ylabel("share of pairs")
ax.set_ylim(0, 1.05)
ax.legend()
fig.tight_layout()

# %%
# A look at some groups
# ---------------------
# One row per group found at ``min_similarity=0.9``: the images side by side, titled with
# how each was made and the crop it came from (photo, row, column); a title in red would
# mark an image whose origin differs from the first image of its group.
shown = groups[:4]
columns = max(len(group) for group in shown)
fig, axes = plt.subplots(len(shown), columns, figsize=(2 * columns, 2.3 * len(shown)), squeeze=False)
for row, group in zip(axes, shown):
    first = truth[names[group[0]]]
    for ax, index in zip(row, group):
        ax.imshow(Image.open(folder / names[index]))
        origin = truth[names[index]]
        short = origin.replace("photo ", "p").replace("crop ", "")
        ax.set_title(f"{kinds[names[index]]}\n{short}", fontsize=8,
                     color="black" if origin == first else "red")
    for ax in row:
        ax.axis("off")
fig.tight_layout()

# sphinx_gallery_start_ignore
# ruff: noqa: E402  (imports sit next to the step that needs them)
import shutil

shutil.rmtree(folder)
# sphinx_gallery_end_ignore
