"""The shipped Prometheus configurations, pointed at test targets: the same jobs, paths
and relabelling, every target replaced by the demo service, every interval 1 s."""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Any

import yaml

#: Keys that say where and how often, which the tests decide.
_TEST_DECIDES = ("job_name", "static_configs", "file_sd_configs", "scrape_interval", "scrape_timeout")


def scrape_jobs(config_file: Path, address: str) -> list[dict[str, Any]]:
    """The config's scrape jobs as tests.support.servers targets: the `prometheus` job
    scrapes the test Prometheus itself, every other job ``address``."""
    config = yaml.safe_load(config_file.read_text())
    jobs = []
    for job in config["scrape_configs"]:
        kept = {key: value for key, value in job.items() if key not in _TEST_DECIDES}
        targets = ["self"] if job["job_name"] == "prometheus" else [address]
        jobs.append({"job": job["job_name"], "targets": targets, **kept})
    return jobs


def rule_files(config_file: Path) -> list[Path]:
    config = yaml.safe_load(config_file.read_text())
    return sorted(Path(path).resolve() for pattern in config.get("rule_files", [])
                  for path in glob.glob(str(config_file.parent / pattern)))
