"""The dataset snapshot (read, validate, checksum, split) and the run context that names it."""
