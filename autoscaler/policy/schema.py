"""The JSON Schema of a policy file, generated from the pydantic model (never written by hand).

``policies/policy.schema.json`` is this output; a test keeps the shipped file equal to it, and the
example policies point editors at it with a ``yaml-language-server`` comment.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from pydantic.json_schema import GenerateJsonSchema

from autoscaler.policy.model import PoolPolicy

SCHEMA_ID = "https://github.com/gpu-autoscaler/gpu-autoscaler/policies/policy.schema.json"


class _PolicySchema(GenerateJsonSchema):
    """Pydantic's generator, with duration defaults shown the way a policy file writes them."""

    def encode_default(self, dft: Any) -> Any:
        """``timedelta(seconds=30)`` becomes ``"30s"`` rather than ISO 8601's ``"PT30S"``."""
        if isinstance(dft, timedelta):
            seconds = dft.total_seconds()
            return f"{int(seconds)}s" if seconds == int(seconds) else f"{seconds}s"
        return super().encode_default(dft)


def policy_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) a policy file validates against, as the model defines it."""
    schema = PoolPolicy.model_json_schema(mode="validation", schema_generator=_PolicySchema)
    return {
        **schema,
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "GPU autoscaler pool policy",
    }


def policy_schema_text() -> str:
    """``policy_schema()`` as the exact text of ``policies/policy.schema.json`` (sorted, newline-ended)."""
    return json.dumps(policy_schema(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
