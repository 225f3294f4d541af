"""Command line of the simulated ASR node: parse flags, serve until SIGTERM/SIGINT, exit cleanly."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Sequence

from autoscaler.node.server import AsrNode, NodeConfig, make_server

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
    parser.add_argument("--load-delay", type=float, default=5.0, help="seconds until the model is loaded")
    parser.add_argument("--gpu-memory-mib", type=int, default=24576)
    parser.add_argument("--model-memory-mib", type=int, default=3400)
    parser.add_argument("--stream-memory-mib", type=int, default=1900)
    parser.add_argument("--real-time-factor", type=float, default=1.0, help="processing s per s of audio")
    parser.add_argument("--model-cache", default=None,
                        help="the node's disk: a file naming the model version once loaded")
    parser.add_argument("--cached-load-fraction", type=float, default=0.1,
                        help="share of --load-delay a start with a matching model cache takes")
    parser.add_argument("--never-ready", action="store_true", help="never finish loading (a broken node)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Serve one node until SIGTERM or SIGINT; return the exit status."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        config = NodeConfig(
            instance_id=args.instance_id, pool=args.pool, model_version=args.model_version,
            streams=args.streams, load_delay_s=args.load_delay, gpu_memory_mib=args.gpu_memory_mib,
            model_memory_mib=args.model_memory_mib, stream_memory_mib=args.stream_memory_mib,
            real_time_factor=args.real_time_factor, never_ready=args.never_ready,
            model_cache=args.model_cache, cached_load_fraction=args.cached_load_fraction,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    node = AsrNode(config)
    try:
        server = make_server(node, args.host, args.port)
    except OSError as exc:
        logger.error("cannot listen on %s:%s: %s", args.host, args.port, exc)
        return 1

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    # serve_forever runs in a thread because shutdown() must be called from another thread than it.
    serving = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="http")
    serving.start()
    host, port = server.server_address[:2]
    logger.info("node %s (pool %s, model %s) listening on %s:%s; model loads in %.2f s (%s)",
                config.instance_id, config.pool, config.model_version, host, port, node.load_delay_s,
                "from its own disk" if node.from_cache else "cold")
    try:
        while not stop.wait(0.5):
            pass
    finally:
        logger.info("stopping node %s", config.instance_id)
        node.close()
        server.shutdown()
        server.server_close()
        serving.join(timeout=5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
