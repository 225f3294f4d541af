"""The simulated ASR node used by the local provider, the demo and the tests.

Run it as ``python -m autoscaler.node --port P --instance-id ID --pool NAME --model-version V``; it
answers ``POST /api/predict/`` like a Fun-ASR WebUI node, ``GET /healthz`` once its model has
"loaded", and ``GET /metrics`` with DCGM-style GPU memory gauges and stream counters.
"""

from autoscaler.node.server import (
    AsrNode,
    BackgroundNode,
    NodeConfig,
    NodeServer,
    PredictRequestError,
    make_server,
    parse_predict,
)

__all__ = [
    "AsrNode",
    "BackgroundNode",
    "NodeConfig",
    "NodeServer",
    "PredictRequestError",
    "make_server",
    "parse_predict",
]
