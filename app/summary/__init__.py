"""The query side: summaries and fleet health from the local registry or a Prometheus backend.

``service`` answers a summary (``SummaryService``), ``promql`` names the queries both sources
evaluate, ``snapshots`` keeps the local history they run on, ``backend`` talks to Prometheus,
``quantiles`` turns bucket rates into percentiles, ``figures`` builds the summary's categories,
``fleet_health`` computes the health score from PromQL, ``caches`` bounds what requests
leave cached in bytes as well as entries, and ``models`` is the JSON contract.
"""
