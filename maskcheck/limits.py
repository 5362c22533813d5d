"""Default resource limits for untrusted model and data files (ours; docs/loading-policy.md).

Far above any model maskcheck audits (a WRN-34-10 is 0.2 GiB of float32 weights), far below
what takes a machine down. Kept free of torch so the CLI can show them in --help cheaply.
"""

import os

GIB = 1024**3
MIB = 1024**2


def physical_memory() -> int | None:
    """Bytes of RAM of this machine, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def default_max_unpacked(ram: int | None = None) -> int:
    """A quarter of RAM, at most 8 GiB and at least 1 GiB (ours): an archive may not take the machine."""
    ram = physical_memory() if ram is None else ram
    if not ram:
        return 2 * GIB
    return int(min(8 * GIB, max(1 * GIB, ram // 4)))


DEFAULT_MAX_FILE_BYTES = 2 * GIB  # --max-file-gib: size of a model or --data file on disk
DEFAULT_MAX_UNPACKED_BYTES = default_max_unpacked()  # --max-unpacked-gib: all an archive unpacks or allocates
DEFAULT_TIMEOUT_PER_BATCH = 300.0  # --timeout-per-batch: seconds of one forward pass
MAX_IMAGE_PIXELS = 4096 * 4096  # ours: an --data image over 16.8 Mpixels is refused (MNIST/CIFAR images are 1 kpixel)
MAX_IMAGE_BYTES = 64 * MIB  # ours: one image file of an --data folder
DEFLATE_RATIO_LIMIT = 200  # ours: real tensors and images inflate 1-10x; zeros (a bomb) ~1000x
DEFLATE_RATIO_FLOOR = 64 * MIB  # the ratio is only checked for entries that unpack past this
