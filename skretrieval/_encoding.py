"""From the ``encoder`` parameter to a feature matrix: building the encoder, running batches."""

from __future__ import annotations

import copy
import os
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ._cache import image_key
from ._preprocessing import Preprocessing, resolve_preprocessing
from ._progress import progress_bar
from .encoders import create_encoder
from .io import ImageInput, to_rgb, to_unit_float
from .io._prefetch import prefetch


def build_encoder(encoder, weights, preprocessing):
    """The fitted encoder and its preprocessing callable for ``encoder=``/``weights=``.

    A user's ``nn.Module`` is deep-copied so that moving or training it never touches the
    caller's object; a plain callable is used as given. Returns ``(None, None)`` for
    ``"precomputed"``.
    """
    if isinstance(encoder, str):
        if encoder == "precomputed":
            return None, None
        built = create_encoder(encoder, weights=weights)
        return built.module, resolve_preprocessing(preprocessing, built.preprocessing)
    if isinstance(encoder, nn.Module):
        module = copy.deepcopy(encoder)
        if isinstance(weights, (str, os.PathLike)) and Path(weights).is_file():
            module.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        return module, resolve_preprocessing(preprocessing, None)
    if callable(encoder):
        return encoder, resolve_preprocessing(preprocessing, None)
    raise TypeError(
        f"encoder of type {type(encoder).__name__} is not accepted; use 'precomputed', a name "
        "from skretrieval.encoders.list_encoders(), an nn.Module or a callable."
    )


def encode(images: ImageInput, run, preprocess, *, batch_size: int, device, n_jobs=1, verbose=0, cache=None):
    """Encode every image: returns ``(features float32 (n, d), labels or None)``.

    ``run`` maps a preprocessed batch to the encoder's output (the encoder itself, or an
    :class:`~skretrieval._inference.InferenceRunner`). Decoding and preprocessing run in a
    background thread (image files: ``n_jobs`` decoding threads) at most two batches ahead
    of ``run``, so the input side overlaps the forward pass. Labels are those the source
    yields itself (a Dataset of ``(image, label)`` pairs). With a
    :class:`~skretrieval._cache.FeatureCache`, only images it does not hold are encoded,
    and each batch is stored as soon as it is encoded.
    """
    features, labels, done = [], [], 0
    prepared = _prepared_batches(images, preprocess, device, batch_size, n_jobs, cache)
    # Both closed on errors too: the progress bar, and the threads running ahead.
    with torch.inference_mode(), progress_bar(images.n, "encoding", verbose) as progress, closing(prefetch(prepared, depth=2)) as ready:
        for batch in ready:
            encoded = None if batch.inputs is None else _as_features(run(batch.inputs))
            if cache is None:
                batch_features = encoded
            else:
                if encoded is not None:
                    cache.put_many([batch.keys[i] for i in batch.missing], encoded)
                    for i, vector in zip(batch.missing, encoded):
                        batch.found[i] = vector
                batch_features = np.stack(batch.found).astype(np.float32, copy=False)
            features.append(batch_features)
            labels.append(batch.labels)
            # Skipped files count as done, so the bar ends at its total. The decoding thread
            # runs ahead and may have skipped files of later batches already: the bar's
            # position is "encoded + skipped so far", which counts each file once.
            done += len(batch_features)
            progress.update(done + len(images.skipped) - progress.n)
        progress.update(done + len(images.skipped) - progress.n)  # files skipped after the last batch
    if not features:
        if images.skipped:
            index, name, reason = images.skipped[0]
            raise ValueError(
                f"all {len(images.skipped)} image(s) of {images.description} were skipped as "
                f"unreadable (first: {reason}); nothing is left to encode. Fix or remove the files."
            )
        raise ValueError(f"{images.description} yielded no image; X must hold at least one sample.")
    all_labels = None if any(lab is None for lab in labels) else np.concatenate(labels)
    return np.concatenate(features), all_labels


@dataclass
class _PreparedBatch:
    """One batch ready for the encoder: ``inputs`` holds the images the cache lacks."""

    inputs: torch.Tensor | None
    labels: np.ndarray | None
    keys: list | None = None
    found: list | None = None
    missing: list = field(default_factory=list)


def _prepared_batches(images: ImageInput, preprocess, device, batch_size, n_jobs, cache):
    """Decode, look up in the cache and preprocess, batch by batch (runs in a background thread)."""
    decode_size = preprocess.decode_size if isinstance(preprocess, Preprocessing) else None
    with torch.inference_mode():  # thread-local: this generator runs in its own thread
        for batch, labels in images.batches(batch_size, n_jobs=n_jobs, decode_size=decode_size):
            if len(batch) == 0:  # every file of the batch was skipped (on_error)
                continue
            if cache is None:
                yield _PreparedBatch(_preprocess_batch(batch, preprocess, device), labels)
                continue
            keys = [image_key(image) for image in batch]
            found = cache.get_many(keys)
            missing = [i for i, vector in enumerate(found) if vector is None]
            subset = batch[missing] if isinstance(batch, torch.Tensor) else [batch[i] for i in missing]
            inputs = _preprocess_batch(subset, preprocess, device) if missing else None
            yield _PreparedBatch(inputs, labels, keys, found, missing)


def _preprocess_batch(batch, preprocess, device) -> torch.Tensor:
    """A uint8/float batch (tensor or list of varied sizes) as encoder input on ``device``."""
    if isinstance(batch, torch.Tensor):
        return _preprocess(batch.to(device), preprocess)
    return torch.cat([_preprocess(image.to(device)[None], preprocess) for image in batch])


def _preprocess(images: torch.Tensor, preprocess) -> torch.Tensor:
    if isinstance(preprocess, Preprocessing):  # any dtype: it resizes every image as uint8
        return preprocess(to_rgb(images))
    return preprocess(to_unit_float(images))


def output_features(output) -> torch.Tensor:
    """The encoder's output as ``(N, D)`` features: the one rule of inference and training.

    A tuple or list gives its first element; trailing dimensions of size 1 (pooled maps
    ``(N, C, 1, 1)``) are flattened; anything else that is not 2-D is refused, so a
    module is never trained on features that inference would not accept.
    """
    if isinstance(output, (tuple, list)):
        output = output[0]
    output = torch.as_tensor(output)
    if output.ndim > 2 and all(s == 1 for s in output.shape[2:]):
        output = output.flatten(1)
    if output.ndim != 2:
        raise ValueError(
            f"the encoder returned shape {tuple(output.shape)}; it must map an (N, C, H, W) batch "
            "to (N, D) features (add global pooling and flatten to your module)."
        )
    return output


def _as_features(output) -> np.ndarray:
    return output_features(output).detach().float().cpu().numpy()
