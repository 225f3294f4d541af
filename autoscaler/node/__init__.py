"""What runs on a GPU node: the node agent, and the simulated ASR server the local fleet runs behind it.

- ``agent``: ``autoscaler node-agent``, the reverse proxy in front of a node's ASR server that
  counts, queues and limits its streams and serves ``/healthz`` and ``/metrics`` (docs/node.md);
- ``server``: a simulated Fun-ASR server (``POST /api/predict/``, a readiness ``/healthz``,
  DCGM-style GPU memory gauges);
- ``python -m autoscaler.node --port P --instance-id ID --pool NAME --model-version V``: one
  simulated node, the simulated server on an internal port behind the real agent on ``P``.
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
