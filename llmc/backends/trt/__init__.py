"""TensorRT backend: detection (:mod:`.detect`), build settings and their builder config
(:mod:`.config`), profiles (:mod:`.profiles`), ONNX parsing (:mod:`.parser`), caches
(:mod:`.cache`), the engine build (:mod:`.loader`), a runner (:mod:`.runner`) and engine
signing (:mod:`.trust`).

Importing this package never imports ``tensorrt`` or ``torch``; they load when an engine is
built or run, so ``--no-engine`` builds and the tests work on machines without a GPU.
"""

from llmc.backends.trt.cache import (
    EngineCache,
    atomic_write,
    default_cache_dir,
    default_timing_cache_path,
    engine_cache_key,
)
from llmc.backends.trt.config import (
    HARDWARE_LEVELS,
    EngineSettings,
    builder_flags,
    configure_builder,
    network_flags,
)
from llmc.backends.trt.detect import (
    device_info,
    import_tensorrt,
    tensorrt_available,
    tensorrt_version,
    trt_major,
)
from llmc.backends.trt.loader import build_engine, build_plan, graph_precision
from llmc.backends.trt.parser import ParserErrorInfo, explain_parser_errors, parse_onnx
from llmc.backends.trt.profiles import (
    ProfileShape,
    check_profiles,
    parse_profile_specs,
    profiles_from_dict,
    profiles_to_dict,
)
from llmc.backends.trt.runner import TrtRunner
from llmc.backends.trt.trust import (
    PLAN_FILE,
    default_key_path,
    engine_manifest,
    key_id,
    load_key,
    load_or_create_key,
    sign_plan,
    verify_plan,
)

__all__ = [
    "HARDWARE_LEVELS",
    "PLAN_FILE",
    "EngineCache",
    "EngineSettings",
    "ParserErrorInfo",
    "ProfileShape",
    "TrtRunner",
    "atomic_write",
    "build_engine",
    "build_plan",
    "builder_flags",
    "check_profiles",
    "configure_builder",
    "default_cache_dir",
    "default_key_path",
    "default_timing_cache_path",
    "device_info",
    "engine_cache_key",
    "engine_manifest",
    "explain_parser_errors",
    "graph_precision",
    "import_tensorrt",
    "key_id",
    "load_key",
    "load_or_create_key",
    "network_flags",
    "parse_onnx",
    "parse_profile_specs",
    "profiles_from_dict",
    "profiles_to_dict",
    "sign_plan",
    "tensorrt_available",
    "tensorrt_version",
    "trt_major",
    "verify_plan",
]
