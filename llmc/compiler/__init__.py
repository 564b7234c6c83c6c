"""The compiler driver: model I/O, pass registry, pipelines, pass manager, instruments, build."""
