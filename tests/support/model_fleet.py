"""A registry of the catalogue's model families holding many models, built apart from the
process's own metric set, for summaries that must be big (memory tests and benchmarks).

    fleet = ModelFleet(models=1000)
    fleet.record_calls()                      # every model serves a few calls
    snapshots = Snapshots(fleet.registry, clock=clock)
"""

from __future__ import annotations

import random

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from app.catalogue import FAMILIES_BY_NAME

#: The families a model's calls feed: everything the providers and models summaries read.
COUNTERS = ("model_inference_requests_total", "tokens_used_total", "credits_used_total", "gatewayz_cost_by_provider")
HISTOGRAMS = ("model_inference_duration_seconds", "gatewayz_time_to_first_token_seconds",
              "provider_response_time_seconds")


class ModelFleet:
    """``models`` models spread over ``providers`` providers, in a registry of their own."""

    def __init__(self, models: int, providers: int = 4, seed: int = 1) -> None:
        self.models = models
        self.providers = providers
        self.registry = CollectorRegistry()
        families = {name: FAMILIES_BY_NAME[name] for name in (*COUNTERS, *HISTOGRAMS)}
        # The cost gauge only grows here, so a Counter's inc() serves: same samples.
        self.counters = {name: (Counter if families[name].kind == "counter" else Gauge)(
            name, families[name].help, families[name].label_names, registry=self.registry) for name in COUNTERS}
        self.histograms = {name: Histogram(name, families[name].help, families[name].label_names,
                                           registry=self.registry, buckets=families[name].buckets)
                           for name in HISTOGRAMS}
        self._rng = random.Random(seed)

    def record_calls(self, per_model: int = 8) -> None:
        """``per_model`` calls on every model (a few of them server errors), with their
        tokens, credits and latencies."""
        rng, counters = self._rng, self.counters
        for index in range(self.models):
            provider, model = f"provider-{index % self.providers}", f"vendor/model-{index:04d}"
            failed = rng.randint(0, max(1, per_model // 8))
            counters["model_inference_requests_total"].labels(provider, model, "success").inc(per_model - failed)
            counters["model_inference_requests_total"].labels(provider, model, "server_error").inc(failed)
            for token_type in ("input", "output"):
                counters["tokens_used_total"].labels(provider, model, token_type).inc(rng.randint(100, 10_000))
            counters["credits_used_total"].labels(provider, model).inc(rng.random())
            for name, labels in (("model_inference_duration_seconds", (provider, model)),
                                 ("gatewayz_time_to_first_token_seconds", (provider, model)),
                                 ("provider_response_time_seconds", (provider,))):
                child = self.histograms[name].labels(*labels)
                for _ in range(per_model):
                    child.observe(rng.expovariate(2.0))
        for index in range(self.providers):
            counters["gatewayz_cost_by_provider"].labels(f"provider-{index}").inc(rng.random())
