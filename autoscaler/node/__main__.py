"""Command line of a simulated GPU node: the simulated ASR server behind the real node agent.

One process per node (the local provider tracks nodes by pid): the simulated server listens on an
internal loopback port picked at start, the production node agent (``autoscaler.node.agent``) on
``--host:--port`` in front of it, as ``autoscaler node-agent`` does on a real node. SIGTERM/SIGINT
cut in-flight transcriptions short and exit cleanly.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
from collections.abc import Sequence

from autoscaler.node.agent import NodeAgent, run_forever
from autoscaler.node.server import AsrNode, NodeConfig, agent_config_for, make_server

logger = logging.getLogger("autoscaler.node")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The node's flags (see ``--help``)."""
    parser = argparse.ArgumentParser(prog="python -m autoscaler.node", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7860, help="0 picks a free port")
    parser.add_argument("--instance-id", required=True)
    parser.add_argument("--pool", required=True)
    parser.add_argument("--model-version", required=True)
    parser.add_argument("--streams", type=int, default=10, help="concurrent transcriptions (C)")
    parser.add_argument("--max-queue", type=int, default=100, help="transcriptions that may wait (then 429)")
    parser.add_argument("--load-delay", type=float, default=5.0, help="seconds until the model is loaded")
    parser.add_argument("--gpu-memory-mib", type=int, default=24576)
    parser.add_argument("--model-memory-mib", type=int, default=3400)
    parser.add_argument("--stream-memory-mib", type=int, default=1900)
    parser.add_argument("--real-time-factor", type=float, default=1.0, help="processing s per s of audio")
    parser.add_argument("--never-ready", action="store_true", help="never finish loading (a broken node)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Serve one node until SIGTERM or SIGINT; return the exit status."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        config = NodeConfig(
            instance_id=args.instance_id, pool=args.pool, model_version=args.model_version,
            streams=args.streams, max_queue=args.max_queue, load_delay_s=args.load_delay,
            gpu_memory_mib=args.gpu_memory_mib,
            model_memory_mib=args.model_memory_mib, stream_memory_mib=args.stream_memory_mib,
            real_time_factor=args.real_time_factor, never_ready=args.never_ready,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    node = AsrNode(config)
    server = make_server(node, "127.0.0.1", 0)  # the internal port: only the agent talks to it
    serving = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="asr-server")
    serving.start()
    agent = NodeAgent(agent_config_for(config, f"http://127.0.0.1:{server.server_address[1]}",
                                       args.host, args.port))
    logger.info("node %s (pool %s, model %s): ASR server on 127.0.0.1:%s, agent on %s:%s",
                config.instance_id, config.pool, config.model_version, server.server_address[1],
                args.host, args.port)

    async def stop_server() -> None:
        logger.info("stopping node %s", config.instance_id)
        node.close()  # in-flight transcriptions end at once with 503, which the agent passes on

    try:
        return run_forever(agent, before_drain=stop_server, drain=False)
    finally:
        node.close()
        server.shutdown()
        server.server_close()
        serving.join(timeout=5)


if __name__ == "__main__":
    sys.exit(main())
