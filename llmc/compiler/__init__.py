"""The compiler: the registry of targets and precisions, the option table and build request, the
build's stages in order (prepare, passes, precision chain, memory, verify, write), the manifest
and the build cache. It compiles; running an artifact is ``llmc.runtime``'s."""
