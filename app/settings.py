"""The service's configuration: one pydantic-settings class, read from ``GATEWAY_METRICS_*``.

Nothing else in the package reads ``os.environ``. Every field is documented in
docs/SETTINGS.md with its default; a test keeps the two in step.
"""

from __future__ import annotations

import logging
import os
import threading
from functools import lru_cache
from typing import Annotated

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

logger = logging.getLogger("gateway_metrics")

#: The secrets that may come from a file (``GATEWAY_METRICS_<NAME>_FILE``) instead of the
#: environment: a Kubernetes Secret mounted as a volume, re-read when it is rotated.
FILE_SECRETS = ("api_key", "prometheus_bearer_token", "prometheus_password")


class FileSecretStr(SecretStr):
    """A secret read from a file, and read again when the file changes.

    Each read of the value costs one ``stat``: the file is read again only when its inode,
    size or modification time changed (the kubelet rotates a mounted Secret by swapping a
    symlink, so the inode changes). Trailing line breaks are dropped (``echo token > file``).
    A file that can no longer be read, or reads blank, keeps the previous value (logged):
    a rotation that goes wrong never opens a guarded route.
    """

    def __init__(self, path: str, variable: str) -> None:
        self.path = path
        self.variable = variable
        self._lock = threading.Lock()
        stat = os.stat(path)
        value = self._read()
        if not value.strip():
            raise ValueError(f"{variable}: {path} is empty")
        super().__init__(value)
        self._key = (stat.st_ino, stat.st_size, stat.st_mtime_ns)

    def _read(self) -> str:
        with open(self.path, encoding="utf-8") as file:
            return file.read().rstrip("\r\n")

    def get_secret_value(self) -> str:
        try:
            stat = os.stat(self.path)
        except OSError as error:
            logger.warning("%s: cannot stat %s (%s); keeping the previous value", self.variable, self.path,
                           error.strerror)
            return self._secret_value
        key = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        if key != self._key:
            with self._lock:
                if key != self._key:
                    self._reload(key)
        return self._secret_value

    def _reload(self, key: tuple[int, int, int]) -> None:
        try:
            value = self._read()
        except (OSError, UnicodeDecodeError) as error:
            logger.warning("%s: cannot read %s (%s); keeping the previous value", self.variable, self.path, error)
            return
        if not value.strip():
            logger.warning("%s: %s is now blank; keeping the previous value", self.variable, self.path)
        else:
            self._secret_value = value
            logger.info("%s: read %s again (it changed)", self.variable, self.path)
        self._key = key


class Settings(BaseSettings):
    """Settings of one gateway-metrics app; ``create_app(Settings(...))`` overrides them."""

    # hide_input_in_errors: a validation error must not print a token it was given.
    model_config = SettingsConfigDict(env_prefix="GATEWAY_METRICS_", extra="ignore", hide_input_in_errors=True)

    # Serving
    host: str = Field("127.0.0.1", description="Address the console script binds to.")
    port: int = Field(8000, ge=1, le=65535, description="Port the console script binds to.")
    metrics_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="If set, the console script also serves /metrics alone on this port "
        "(an internal scrape port, so the public port can block it).",
    )
    supervisor_pid: int | None = Field(
        None,
        ge=1,
        description="Set by `gateway-metrics --workers` for its workers, not by hand: a worker "
        "stops once this process (its supervisor) is no longer its parent.",
    )
    exporter_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="Set by `gateway-metrics --workers` for its workers, not by hand: /ready answers 503 "
        "until the exporter listens on this port.",
    )

    # Security
    api_key: SecretStr | None = Field(
        None,
        description="Bearer token required on /metrics and /prometheus/metrics/*; "
        "empty or blank means none (logged as a warning).",
    )
    api_key_file: str | None = Field(
        None,
        description="File holding the bearer token instead (a mounted Secret), read again when it changes; "
        "not together with GATEWAY_METRICS_API_KEY.",
    )

    # Recording
    access_log: bool = Field(True, description="Write one JSON line per request.")
    label_cap: int = Field(
        500, ge=1, description="Distinct values a caller-supplied label keeps per family."
    )
    series_cap: int = Field(
        8000,
        ge=1,
        description="Series one family may expose (a histogram label set counts its buckets + 2); "
        "past it, new label sets record a free-text label as \"other\".",
    )
    top_n: int = Field(10, ge=1, le=1000, description="Length of the summary's top-N lists.")
    genai_semconv: bool = Field(
        False,
        description="Also record the OpenTelemetry GenAI semantic conventions' instruments "
        "(gen_ai_client_token_usage, gen_ai_client_operation_duration_seconds, ...) for every upstream call.",
    )

    # Demo traffic
    demo: bool = Field(False, description="Feed the registry with simulated gateway traffic.")
    demo_rate: float = Field(
        20.0, gt=0, le=10_000, description="Simulated upstream calls per second in demo mode."
    )
    demo_cycle_seconds: float = Field(
        240.0, gt=0, description="Period over which the demo's flaky provider degrades and recovers."
    )

    # Prometheus-compatible backend for the summaries
    prometheus_url: str | None = Field(
        None, description="Base URL of Prometheus, VictoriaMetrics, Thanos or Mimir."
    )
    prometheus_bearer_token: SecretStr | None = Field(None, description="Bearer token for the backend.")
    prometheus_username: str | None = Field(None, description="Basic-auth user for the backend.")
    prometheus_password: SecretStr | None = Field(None, description="Basic-auth password.")
    prometheus_bearer_token_file: str | None = Field(
        None,
        description="File holding the backend's bearer token instead (a mounted Secret), read again when it changes.",
    )
    prometheus_password_file: str | None = Field(
        None,
        description="File holding the basic-auth password instead (a mounted Secret), read again when it changes.",
    )
    prometheus_job: str | None = Field(
        None,
        description="If set, every summary query matches job=\"...\" (other apps may export "
        "http_requests_total or process_* too).",
    )
    prometheus_verify_tls: bool = Field(True, description="Verify the backend's TLS certificate.")
    prometheus_ca_bundle: str | None = Field(None, description="CA bundle path for the backend.")
    query_deadline_seconds: float = Field(
        2.0, gt=0, le=60, description="Deadline for one summary's backend queries, all together."
    )
    query_cache_seconds: float = Field(
        10.0, ge=0, le=3600, description="How long backend query results are reused."
    )
    summary_window_seconds: int = Field(
        300, ge=10, le=86_400, description="Default window for rates, ratios and percentiles."
    )
    snapshot_interval_seconds: float = Field(
        5.0, gt=0, le=300, description="How often local mode snapshots its own registry."
    )
    summary_history_mb: float = Field(
        64.0, gt=0, description="Memory budget of local mode's history of its registry (the oldest "
        "snapshots go first past it); an hour of 2 providers x 500 models takes about 40 MB."
    )

    # Provider health
    health_weights: Annotated[tuple[float, float, float], NoDecode] = Field(
        (0.4, 0.3, 0.3),
        description="Weights of availability, 1 - error rate and latency score; sum to 1.",
    )
    apdex_threshold_seconds: float = Field(
        2.0, gt=0, description="Global Apdex threshold T for provider latency."
    )
    probe_urls: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict,
        description="Active probes, as provider=url pairs separated by commas.",
    )
    probe_interval_seconds: float = Field(15.0, gt=0, description="Interval between probes.")
    probe_unhealthy_interval_seconds: float = Field(
        1.0, gt=0, description="Interval between probes of a provider whose circuit is not closed."
    )

    # Sharing health between processes and replicas
    redis_url: SecretStr | None = Field(
        None,
        description="Redis that replicas share their providers' outcomes through (redis://host:6379/0); "
        "unset: each replica decides alone (its workers still share through PROMETHEUS_MULTIPROC_DIR).",
    )
    redis_key_prefix: str = Field(
        "gateway-metrics", min_length=1, max_length=100,
        description="Prefix of the Redis keys, so two gateways can share one Redis.",
    )

    @field_validator("health_weights", mode="before")
    @classmethod
    def _parse_weights(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(float(part) for part in value.split(","))
        return value

    @field_validator("probe_urls", mode="before")
    @classmethod
    def _parse_probes(cls, value: object) -> object:
        if isinstance(value, str):
            pairs = [item.split("=", 1) for item in value.split(",") if item.strip()]
            if any(len(pair) != 2 for pair in pairs):
                raise ValueError("expected provider=url pairs separated by commas")
            return {name.strip(): url.strip() for name, url in pairs}
        return value

    @model_validator(mode="after")
    def _check_weights(self) -> Settings:
        if abs(sum(self.health_weights) - 1.0) > 1e-6 or min(self.health_weights) < 0:
            raise ValueError("health_weights must be three non-negative numbers summing to 1")
        return self

    @model_validator(mode="after")
    def _read_secret_files(self) -> Settings:
        for name in FILE_SECRETS:
            path: str | None = getattr(self, f"{name}_file")
            if path is None:
                continue
            variable = f"GATEWAY_METRICS_{name.upper()}"
            if getattr(self, name) is not None:
                raise ValueError(f"{variable} and {variable}_FILE are both set: set one of them")
            try:
                secret = FileSecretStr(path, f"{variable}_FILE")
            except OSError as error:
                raise ValueError(f"{variable}_FILE: cannot read {path}: {error.strerror}") from None
            object.__setattr__(self, name, secret)
        return self

    @model_validator(mode="after")
    def _warn_blank_api_key(self) -> Settings:
        # An unset compose variable (API_KEY: ${METRICS_KEY}) arrives as "": that is no
        # token, said loudly, never a token that "Authorization: Bearer" alone matches.
        if self.api_key is not None and self.bearer_token is None:
            logger.warning(
                "GATEWAY_METRICS_API_KEY is set but blank: the metrics routes are served "
                "WITHOUT authentication. Set a token, or unset the variable to silence this."
            )
        return self

    @property
    def bearer_token(self) -> bytes | None:
        """The token the metrics routes require, or None when they are open."""
        if self.api_key is None:
            return None
        # Trimmed of ASCII whitespace only, as the header's token is (app.dependencies).
        token = self.api_key.get_secret_value().encode().strip()
        return token or None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The settings read from the environment, once per process."""
    return Settings()
