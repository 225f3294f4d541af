"""The policy package and the domain stay free of SDKs, HTTP clients and databases."""

from __future__ import annotations

import json
import subprocess
import sys

FORBIDDEN = ("boto3", "botocore", "alibabacloud", "httpx", "requests", "sqlmodel", "sqlalchemy",
             "prometheus_api_client", "psycopg")


def test_policy_and_domain_import_no_io_libraries() -> None:
    """Importing autoscaler.policy.* and autoscaler.domain loads no SDK/HTTP/database module."""
    code = (
        "import json, sys\n"
        "import autoscaler.domain, autoscaler.policy, autoscaler.policy.engine, autoscaler.policy.load\n"
        "import autoscaler.policy.schedule, autoscaler.policy.explain, autoscaler.policy.schema\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    loaded = json.loads(out.stdout)
    assert "autoscaler.policy.engine" in loaded
    bad = [m for m in loaded if m.split(".")[0] in FORBIDDEN]
    assert bad == []
