"""gateway-metrics: metrics, summaries and provider health for an LLM API gateway."""

__version__ = "0.1.0"
