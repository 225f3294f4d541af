"""Real nginx and Prometheus binaries run as plain child processes on 127.0.0.1, each in a private
folder, for the local demo and the end-to-end tests.

``EmbeddedNginx`` and ``EmbeddedPrometheus`` are context managers: entering starts the process on a
free loopback port and waits (bounded) until it answers; leaving stops it (SIGTERM, then SIGKILL of
its whole process group after a timeout). Their configs are rendered from the templates in
``infra/nginx/`` and ``infra/prometheus/``.
"""

from autoscaler.embedded._process import EmbeddedProcessError, free_port
from autoscaler.embedded.nginx import EmbeddedNginx
from autoscaler.embedded.prometheus import EmbeddedPrometheus

__all__ = ["EmbeddedNginx", "EmbeddedProcessError", "EmbeddedPrometheus", "free_port"]
