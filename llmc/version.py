"""llmc's version: one place, imported by the package face and recorded in every manifest."""

__version__ = "0.1.0"
