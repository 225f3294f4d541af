"""Fixtures for balancer tests: a real nginx per test (from the shared embedded fixtures) and tiny
HTTP backends to send traffic to through it.
"""

from __future__ import annotations

import pytest

from autoscaler.balancers.nginx import NginxBalancer
from autoscaler.embedded import EmbeddedNginx
from autoscaler.testing.embedded_fixtures import (  # noqa: F401 - pytest finds fixtures by name
    embedded_nginx,
    start_http_backend,
)


@pytest.fixture
def nginx_balancer(embedded_nginx: EmbeddedNginx) -> NginxBalancer:  # noqa: F811 - the imported fixture
    """An NginxBalancer owning the embedded nginx's upstream file (10 s command timeout)."""
    return NginxBalancer(embedded_nginx.balancer_config(), command_timeout_s=10.0)
