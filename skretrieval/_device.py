"""Choosing the torch device a computation runs on."""

import torch


def resolve_device(device) -> torch.device:
    """Turn the ``device`` parameter into a :class:`torch.device`.

    ``"auto"`` picks CUDA, then Apple's MPS, then the CPU. Anything else is passed to
    :class:`torch.device`, so ``"cpu"``, ``"cuda:1"`` and ``torch.device`` objects work.
    """
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            f"device={device!r} is not a device torch knows; use 'auto', 'cpu', 'cuda', "
            "'cuda:N', 'mps' or a torch.device."
        ) from exc
