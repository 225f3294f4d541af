"""Command line of a simulated GPU node: the simulated ASR server behind the real node agent.

One process per node (the local provider tracks nodes by pid): the simulated server listens on an
internal loopback port picked at start, the production node agent (``autoscaler.node.agent``) on
``--host:--port`` in front of it, as ``autoscaler node-agent`` does on a real node. SIGTERM/SIGINT
cut in-flight transcriptions short and exit cleanly.

``--server-command`` runs a real ASR server instead (a JSON list of words; ``{port}`` and
``{streams}`` are filled in) as a child process on the internal port, behind the same agent.
"""

from __future__ import annotations

import argparse
import json
import logging
import socket
import subprocess
import sys
import threading
from collections.abc import Sequence

from autoscaler.node.agent import AgentConfig, NodeAgent, run_forever
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
    parser.add_argument("--server-command", help="JSON list: a real ASR server to run instead")
    parser.add_argument("--server-probe-path", default="/healthz", help="its readiness path")
    return parser.parse_args(argv)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def run_real_server(args: argparse.Namespace, config: NodeConfig) -> int:
    """A real ASR server (``--server-command``) on an internal port, behind the node agent."""
    try:
        words = json.loads(args.server_command)
        if not isinstance(words, list) or not words or not all(isinstance(w, str) for w in words):
            raise ValueError("not a non-empty JSON list of strings")
    except ValueError as exc:
        print(f"error: --server-command: {exc}", file=sys.stderr)
        return 2
    port = _free_port()
    command = [w.replace("{port}", str(port)).replace("{streams}", str(config.streams)) for w in words]
    try:
        server = subprocess.Popen(command, stdin=subprocess.DEVNULL)
    except OSError as exc:
        logger.error("cannot start the ASR server %s: %s", command[0], exc)
        return 1
    logger.info("node %s (pool %s, model %s): ASR server %s (pid %d) on 127.0.0.1:%d, agent on %s:%s",
                config.instance_id, config.pool, config.model_version, command[0], server.pid, port,
                args.host, args.port)
    agent = NodeAgent(AgentConfig(
        listen_host=args.host, listen_port=args.port, upstream=f"http://127.0.0.1:{port}",
        max_streams=config.streams, max_queue=config.max_queue, probe_path=args.server_probe_path,
        probe_interval_s=0.5, labels={"instance_id": config.instance_id, "pool": config.pool},
    ))

    async def stop_server() -> None:
        logger.info("stopping node %s", config.instance_id)
        server.terminate()

    try:
        return run_forever(agent, before_drain=stop_server, drain=False)
    finally:
        server.terminate()
        try:
            server.wait(timeout=5)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=5)


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
    if args.server_command:
        return run_real_server(args, config)
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
