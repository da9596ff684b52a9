"""The OpenTelemetry GenAI semantic conventions' instruments, beside our own families.

With ``GATEWAY_METRICS_GENAI_SEMCONV=true`` every upstream call the helpers record also
records the GenAI instruments (``app.catalogue.GENAI_FAMILIES``) under the Prometheus names
the OpenTelemetry Python SDK's exporter gives them, so dashboards written for Envoy AI
Gateway, Kong or LiteLLM's OpenTelemetry metrics read this gateway too::

    gen_ai_client_token_usage{gen_ai_operation_name, gen_ai_provider_name, gen_ai_request_model, gen_ai_token_type}
    gen_ai_client_operation_duration_seconds{error_type, gen_ai_operation_name, gen_ai_provider_name, ...}
    gen_ai_server_time_to_first_token_seconds{...}, gen_ai_server_time_per_output_token_seconds{...}

They are our own prometheus_client families, made through :class:`app.registry.BoundedMetric`:
the same label cap and series cap as every other family, no OpenTelemetry SDK at run time.
Off (the default), nothing here is built and the hot path does not change.
"""

from __future__ import annotations

from typing import Any

from app import multiprocess
from app.catalogue import GENAI_FAMILIES
from app.registry import BoundedMetric, MetricSet

#: ``gen_ai.operation.name`` when the caller names none: the helpers track chat completions.
DEFAULT_OPERATION = "chat"

#: The spec's well-known ``gen_ai.provider.name`` values, by the names gateways give those
#: providers (lower case). A provider not here keeps its own label value: the spec allows a
#: custom value when no well-known one applies (openrouter, cerebras, together, ...).
WELL_KNOWN_PROVIDERS: dict[str, str] = {
    "openai": "openai",
    "anthropic": "anthropic",
    "bedrock": "aws.bedrock",
    "aws-bedrock": "aws.bedrock",
    "aws_bedrock": "aws.bedrock",
    "aws.bedrock": "aws.bedrock",
    "azure": "azure.ai.openai",
    "azure-openai": "azure.ai.openai",
    "azure_openai": "azure.ai.openai",
    "azure.ai.openai": "azure.ai.openai",
    "azure-ai-inference": "azure.ai.inference",
    "azure.ai.inference": "azure.ai.inference",
    "cohere": "cohere",
    "deepseek": "deepseek",
    "gemini": "gcp.gemini",
    "google": "gcp.gemini",
    "google-ai-studio": "gcp.gemini",
    "gcp.gemini": "gcp.gemini",
    "vertex": "gcp.vertex_ai",
    "vertex-ai": "gcp.vertex_ai",
    "vertex_ai": "gcp.vertex_ai",
    "vertexai": "gcp.vertex_ai",
    "gcp.vertex_ai": "gcp.vertex_ai",
    "gcp.gen_ai": "gcp.gen_ai",
    "groq": "groq",
    "watsonx": "ibm.watsonx.ai",
    "ibm-watsonx": "ibm.watsonx.ai",
    "ibm.watsonx.ai": "ibm.watsonx.ai",
    "mistral": "mistral_ai",
    "mistralai": "mistral_ai",
    "mistral-ai": "mistral_ai",
    "mistral_ai": "mistral_ai",
    "moonshot": "moonshot_ai",
    "moonshotai": "moonshot_ai",
    "moonshot_ai": "moonshot_ai",
    "perplexity": "perplexity",
    "xai": "x_ai",
    "x-ai": "x_ai",
    "x_ai": "x_ai",
}


def genai_provider_name(provider: str) -> str:
    """``gen_ai.provider.name`` for a provider as our labels record it."""
    return WELL_KNOWN_PROVIDERS.get(provider.lower(), provider)


def genai_error_type(status: str) -> str:
    """``error.type`` of a call whose inference status is ``status`` ("" on a success)."""
    return "" if status == "success" else status


class GenAISemconv:
    """The GenAI instruments of one metric set, registered in its registries (models)."""

    __slots__ = ("_token_usage", "_duration", "_ttft", "_tpot", "_providers")

    def __init__(self, metrics: MetricSet, label_cap: int, series_cap: int) -> None:
        bounded = {
            family.name: BoundedMetric(family, label_cap, metrics.overflow, series_cap) for family in GENAI_FAMILIES
        }
        for family in GENAI_FAMILIES:
            metrics.metrics[family.name] = bounded[family.name]  # reset() and lookups reach them too
            if metrics.in_files:  # several workers: every registry reads every worker's files
                if multiprocess.DIRECTORY is None:
                    raise RuntimeError(f"the metrics write to multiprocess files but {multiprocess.ENV_VAR} is unset")
                metrics.register(multiprocess.FilesCollector(multiprocess.DIRECTORY, [(family.name, family.kind)]),
                                 family.categories)
            else:
                metrics.register(bounded[family.name].metric, family.categories)
        self._token_usage = bounded["gen_ai_client_token_usage"]
        self._duration = bounded["gen_ai_client_operation_duration_seconds"]
        self._ttft = bounded["gen_ai_server_time_to_first_token_seconds"]
        self._tpot = bounded["gen_ai_server_time_per_output_token_seconds"]
        # provider label value -> gen_ai.provider.name; bounded by the provider label's cap.
        self._providers: dict[str, str] = {}

    def _provider(self, name: str) -> str:
        try:
            return self._providers[name]
        except KeyError:
            value = self._providers[name] = genai_provider_name(name)
            return value

    def record_call(
        self,
        name: str,
        model: Any,
        operation: Any,
        status: str,
        duration: float | None,
        ttft: float | None,
        tpot: float | None,
    ) -> None:
        """One finished call: ``name`` the provider as our labels record it, numbers checked."""
        provider = self._provider(name)
        if operation is None:
            operation = DEFAULT_OPERATION
        if duration is not None:
            self._duration.child(genai_error_type(status), operation, provider, model).observe(duration)
        if status == "success":  # the server instruments count successful responses only
            if ttft is not None:
                self._ttft.child(operation, provider, model).observe(ttft)
            if tpot is not None:
                self._tpot.child(operation, provider, model).observe(tpot)

    def record_time_per_output_token(self, name: str, model: Any, operation: Any, tpot: float) -> None:
        """The time per output token of a successful call whose usage came after its end."""
        self._tpot.child(operation if operation is not None else DEFAULT_OPERATION, self._provider(name),
                         model).observe(tpot)

    def record_tokens(
        self, name: str, model: Any, operation: Any, input_tokens: float | None, output_tokens: float | None
    ) -> None:
        """The tokens of one call (checked numbers; None: not reported)."""
        provider = self._provider(name)
        if operation is None:
            operation = DEFAULT_OPERATION
        if input_tokens is not None:
            self._token_usage.child(operation, provider, model, "input").observe(input_tokens)
        if output_tokens is not None:
            self._token_usage.child(operation, provider, model, "output").observe(output_tokens)
