"""TensorRT backend: profiles (:mod:`.profiles`), a loader that builds and caches engines
(:mod:`.loader`), a runner (:mod:`.runner`) and engine signing (:mod:`.trust`).

Importing this package never imports ``tensorrt`` or ``torch``; they load when an engine is
built or run, so ``--no-engine`` builds and the tests work on machines without a GPU.
"""

from llmc.backends.trt.loader import (
    HARDWARE_LEVELS,
    PRECISIONS,
    EngineCache,
    EngineConfig,
    ParserErrorInfo,
    build_engine,
    builder_flags,
    configure_builder,
    default_cache_dir,
    default_timing_cache_path,
    device_info,
    engine_cache_key,
    explain_parser_errors,
    import_tensorrt,
    network_flags,
    parse_onnx,
    tensorrt_available,
    tensorrt_version,
    trt_major,
)
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
    "PRECISIONS",
    "EngineCache",
    "EngineConfig",
    "ParserErrorInfo",
    "ProfileShape",
    "TrtRunner",
    "build_engine",
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
