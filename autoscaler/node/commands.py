"""``autoscaler node-agent``: run the node agent in front of a node's ASR server (see ``agent.py``)."""

from __future__ import annotations

import logging
from typing import Annotated

import typer
from pydantic import ValidationError


def node_agent(
    listen: Annotated[str, typer.Option(help="HOST:PORT the agent serves on (the node port).")] = (
        "0.0.0.0:7860"
    ),
    upstream: Annotated[str, typer.Option(help="URL of the ASR server on its internal port.")] = (
        "http://127.0.0.1:7861"
    ),
    max_streams: Annotated[int, typer.Option(help="Transcriptions the GPU runs at once (C).")] = 10,
    max_queue: Annotated[int, typer.Option(help="Transcriptions that may wait; beyond: 429.")] = 100,
    queue_timeout: Annotated[float, typer.Option(help="Seconds a transcription may wait; then 503.")] = 600.0,
    stream_timeout: Annotated[float, typer.Option(help="Seconds a transcription may run; then 504.")] = 900.0,
    body_timeout: Annotated[float, typer.Option(help="Seconds to receive a request body; then 408.")] = 60.0,
    max_body_mib: Annotated[int, typer.Option(help="Largest transcription body in MiB; beyond: 413.")] = 64,
    route: Annotated[
        list[str] | None,
        typer.Option(help="'METHOD /path' counted as a transcription (repeat; default: Gradio's predict "
                     "routes). A path ending in '*' is a prefix."),
    ] = None,
    queue_join: Annotated[
        list[str] | None,
        typer.Option(help="Gradio queue join route (repeat; default: POST /gradio_api/queue/join, "
                     "POST /queue/join)."),
    ] = None,
    queue_data: Annotated[
        list[str] | None,
        typer.Option(help="Gradio queue event-stream route (repeat; default: GET /gradio_api/queue/data, "
                     "GET /queue/data)."),
    ] = None,
    probe_path: Annotated[str, typer.Option(help="Readiness path on the server: 200 = model loaded.")] = "/",
    probe_body: Annotated[
        str | None, typer.Option(help="JSON to POST to --probe-path instead of a GET (a tiny request).")
    ] = None,
    probe_interval: Annotated[float, typer.Option(help="Seconds between readiness probes.")] = 2.0,
    probe_timeout: Annotated[float, typer.Option(help="Seconds a probe may take.")] = 5.0,
    retry_after: Annotated[int, typer.Option(help="Retry-After seconds on a 429.")] = 5,
    drain_timeout: Annotated[
        float, typer.Option(help="Seconds SIGTERM waits for streams to finish.")
    ] = 300.0,
    label: Annotated[
        list[str] | None, typer.Option(help="NAME=VALUE added to every agent series (repeat).")
    ] = None,
    upstream_metrics: Annotated[
        str | None, typer.Option(help="Path of the server's own /metrics to append to the agent's.")
    ] = None,
) -> None:
    """Proxy a node's ASR server: count, queue and limit its streams; serve /healthz and /metrics."""
    from autoscaler.node.agent import NodeAgent, agent_config, run_forever

    try:
        config = agent_config(
            listen=listen, upstream=upstream, max_streams=max_streams, max_queue=max_queue, routes=route,
            queue_join=queue_join, queue_data=queue_data, probe_path=probe_path, probe_body=probe_body,
            labels=label or [], queue_timeout_s=queue_timeout, stream_timeout_s=stream_timeout,
            body_timeout_s=body_timeout, max_body_bytes=max_body_mib << 20, probe_interval_s=probe_interval,
            probe_timeout_s=probe_timeout, retry_after_s=retry_after, drain_timeout_s=drain_timeout,
            upstream_metrics_path=upstream_metrics,
        )
    except ValidationError as exc:
        for error in exc.errors():
            where = ".".join(str(p) for p in error["loc"]) or "node-agent"
            typer.echo(f"error: {where.replace('_', '-')}: {error['msg']}", err=True)
        raise typer.Exit(2) from exc
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    raise typer.Exit(run_forever(NodeAgent(config)))


def register(app: typer.Typer) -> None:
    """Add ``node-agent`` to the ``autoscaler`` command line."""
    app.command("node-agent")(node_agent)
