"""Built-in passes. Importing this package registers them (see ``llmc passes``)."""

from llmc.passes import cse, fold, fusion, noop, prune, shape  # noqa: F401  (registration)
from llmc.passes.memory import reorder  # noqa: F401  (registration)
