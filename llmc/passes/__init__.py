"""The passes: a registry of named onnx-ir passes, textual pipelines, the PassManager and its
instruments. The built-in passes register themselves when the registry is first asked
(``registry.all_passes`` / ``get_pass``), so importing this package stays light."""

__all__ = ["registry", "pipeline", "manager", "instruments"]
