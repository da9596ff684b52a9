"""The demo service the deploy tests scrape: one process for the package."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.servers import ServiceProcess, start_service

#: Demo traffic that shows the incidents the rules look for within seconds: a 12-second
#: cycle takes the flaky provider through degraded and down (circuit trips), and a label
#: cap of 10 is reached by the demo's client that sends made-up model names.
DEMO_ENV = {
    "GATEWAY_METRICS_DEMO": "true",
    "GATEWAY_METRICS_DEMO_RATE": "60",
    "GATEWAY_METRICS_DEMO_CYCLE_SECONDS": "12",
    "GATEWAY_METRICS_LABEL_CAP": "10",
    "GATEWAY_METRICS_ACCESS_LOG": "false",
}


@pytest.fixture(scope="package")  # stopped once tests/deploy is done: it costs CPU
def demo_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    service = start_service(tmp_path_factory.mktemp("demo-service"), env=DEMO_ENV, recipe=False)
    try:
        yield service
    finally:
        service.stop()
