"""Machine facts every benchmark prints, so ratios can be read against the hardware."""

import os
import platform


def cpu_model() -> str:
    """The CPU's name, with its family and model numbers (a virtual machine's name may be only
    "AMD EPYC", the same for several generations)."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or "unknown"
    if "cpu family" in fields and "model" in fields:
        name += f" (family {fields['cpu family']}, model {fields['model']})"
    return name


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
