"""Hostile input at the HTTP edge: schemathesis against the app's own OpenAPI schema.

Every route of the schema, with generated and mutated parameters, headers and bodies:
never a server error, every response in its documented schema and content type. A fixed
seed and a bounded number of examples keep the run repeatable and a few seconds long.
"""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

from app.main import create_app
from app.settings import Settings
from app.telemetry import Telemetry

# No backend: the summaries answer from the local registry, so no network is needed. A
# telemetry of its own: built at import, it leaves the process's default alone.
_settings = Settings(prometheus_url=None, access_log=False)
schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(_settings, Telemetry(_settings)))

CHECKS = (not_a_server_error, response_schema_conformance, content_type_conformance)


@schema.parametrize()
@settings(max_examples=15, derandomize=True, deadline=None,
          suppress_health_check=list(HealthCheck))
def test_no_route_answers_a_server_error_or_off_schema(case: schemathesis.Case) -> None:
    case.call_and_validate(checks=CHECKS)
