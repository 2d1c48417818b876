"""Machine facts every benchmark prints, so ratios can be read against the hardware."""

import os
import platform


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> set:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def describe() -> str:
    import torch

    flags = cpu_flags()
    bf16 = sorted(f for f in flags if f in {"avx512_bf16", "amx_bf16", "amx_tile", "avx512f"})
    return (
        f"CPU: {cpu_model()}, {os.cpu_count()} cores, flags: {' '.join(bf16) or 'no avx512/amx'}; "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads); python {platform.python_version()}"
    )
