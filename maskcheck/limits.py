"""Default resource limits for untrusted model files (ours; README, "Loading policy").

Far above any model maskcheck audits (a WRN-34-10 is 0.2 GiB of float32 weights), far below
what takes a machine down. Kept free of torch so the CLI can show them in --help cheaply.
"""

GIB = 1024**3
DEFAULT_MAX_FILE_BYTES = 2 * GIB  # --max-file-gib: size of the model file on disk
DEFAULT_MAX_UNPACKED_BYTES = 8 * GIB  # --max-unpacked-gib: everything an archive unpacks or allocates
DEFAULT_TIMEOUT_PER_BATCH = 300.0  # --timeout-per-batch: seconds of one forward pass
