"""Memory read bandwidth as ONNX Runtime achieves it: the floor a decode step is measured against.

One ReduceSum over a float32 tensor (512 MiB by default, far beyond any cache) in a session of
the given configuration (device and intra-op threads: a decode step's own), the tensor bound on
the session's device once; bandwidth = bytes / the median time of the timed runs
(:func:`llmc.runtime.timing.interleaved`, after one untimed run). ``llmc bench --decode`` and
``benchmarks.decode`` both measure with it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from llmc.errors import LlmcError
from llmc.runtime.timing import interleaved

if TYPE_CHECKING:
    from llmc.runtime.ort import SessionConfig

MIB = 1 << 20


def measure_bandwidth(config: SessionConfig | None = None, mib: int = 512, runs: int = 5) -> float:
    """Read bandwidth in GB/s (1e9 bytes per second) of a ReduceSum over ``mib`` MiB of float32
    on ``config``'s device and threads (a :class:`~llmc.runtime.ort.SessionConfig`; None: the
    default, CPU); the median of ``runs`` timed runs."""
    import onnx.helper as oh
    from onnx import TensorProto

    from llmc.runtime.ort import OrtRunner, SessionConfig, create_session

    if mib < 1 or runs < 1:
        raise LlmcError(f"bandwidth: give at least 1 MiB and 1 run (got {mib} MiB, {runs} runs)")
    count = mib * MIB // 4
    graph = oh.make_graph(
        [oh.make_node("ReduceSum", ["x"], ["y"], keepdims=0)], "bandwidth",
        [oh.make_tensor_value_info("x", TensorProto.FLOAT, [count])],
        [oh.make_tensor_value_info("y", TensorProto.FLOAT, [])],
    )
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 18)])
    config = config if config is not None else SessionConfig()
    runner = OrtRunner(create_session(model.SerializeToString(), config), io_binding=True)
    feeds = runner.to_device({"x": np.ones(count, np.float32)})
    seconds = interleaved({"reduce": lambda: runner.run_bound(feeds)}, 1, runs, warmup=1, per_call=True)["reduce"]
    return count * 4 / float(np.median(seconds)) / 1e9
