#!/usr/bin/env python3
"""Writes the Grafana dashboards (gateway.json, workers.json, registry.json, preprocess.json) beside
this script from the panel lists below. Edit the lists, run `python3 deploy/grafana/generate.py`, and
commit the JSON with them; tests/deploy/test_prometheus.py fails when the two differ, and
tests/deploy/test_live_metrics.py evaluates every query against a live mesh.

Every query names only metrics the services export (their READMEs list them) or the recording rules
of deploy/prometheus/rules.yml. Grafana's $__rate_interval and the dashboards' variables
($datasource, $model_name, $instance) are the only placeholders.
"""
from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODEL = 'model_name=~"$model_name"'


def quantiles(metric: str, selector: str, by: str = "model_name") -> list[tuple[str, str]]:
    return [(f"p{int(q * 100)} {{{{{by}}}}}",
             f"histogram_quantile({q}, sum by ({by}, le) (rate({metric}_bucket{{{selector}}}[$__rate_interval])))")
            for q in (0.5, 0.9, 0.99)]


def panel(title: str, unit: str, targets: list[tuple[str, str]], description: str = "") -> dict:
    return {"title": title, "unit": unit, "targets": targets, "description": description}


GATEWAY = {
    "uid": "flotilla-gateway", "title": "Flotilla / Gateway",
    "variables": [("model_name", "label_values(flotilla_router_replicas, model_name)")],
    "panels": [
        panel("Output tokens/s", "short", [("{{model_name}}", f"sum by (model_name) (rate(flotilla_request_generation_tokens_total{{{MODEL}}}[$__rate_interval]))")],
              "Tokens delivered to clients, counted when requests finish"),
        panel("Prompt tokens/s", "short", [("{{model_name}}", f"sum by (model_name) (rate(flotilla_request_prompt_tokens_total{{{MODEL}}}[$__rate_interval]))")]),
        panel("Finished requests/s by reason", "reqps", [("{{model_name}} {{finished_reason}}", f"sum by (model_name, finished_reason) (rate(flotilla_request_success_total{{{MODEL}}}[$__rate_interval]))")]),
        panel("Time to first token", "s", quantiles("flotilla_time_to_first_token_seconds", MODEL)),
        panel("Inter-token latency", "s", quantiles("flotilla_inter_token_latency_seconds", MODEL)),
        panel("End-to-end request latency", "s", quantiles("flotilla_e2e_request_latency_seconds", MODEL)),
        panel("Gateway queue time", "s", quantiles("flotilla_request_queue_time_seconds", MODEL),
              "Arrival until handed to a replica; the engines' own queues show in TTFT"),
        panel("Requests running / waiting", "short", [
            ("running {{model_name}}", f"max by (model_name) (flotilla_router_num_requests_running{{{MODEL}}})"),
            ("waiting {{model_name}}", f"max by (model_name) (flotilla_router_num_requests_waiting{{{MODEL}}})")],
            "The replicas' load reports as the gateways see them"),
        panel("KV-cache usage", "percentunit", [("{{model_name}}", f"max by (model_name) (flotilla_router_kv_cache_usage_perc{{{MODEL}}})")]),
        panel("Preemptions/s", "short", [("{{model_name}}", f"sum by (model_name) (rate(flotilla_num_preemptions_total{{{MODEL}}}[$__rate_interval]))")],
              "Sequences whose KV blocks were freed to be recomputed (from the workers)"),
        panel("Prefix-cache hit rate", "percentunit", [("{{model_name}}",
              f"sum by (model_name) (rate(flotilla_prefix_cache_hits_total{{{MODEL}}}[$__rate_interval])) / "
              f"sum by (model_name) (rate(flotilla_prefix_cache_queries_total{{{MODEL}}}[$__rate_interval]))")],
              "Prompt tokens found in the workers' prefix caches over prompt tokens looked up"),
        panel("Live replicas", "short", [("{{model_name}}", f"max by (model_name) (flotilla_router_replicas{{{MODEL}}})")]),
        panel("Failovers/s", "short", [("{{model_name}}", f"sum by (model_name) (rate(flotilla_worker_failovers_total{{{MODEL}}}[$__rate_interval]))")],
              "Choices moved to another replica because their worker's stream broke"),
        panel("TTFT SLO error ratio (99% within 2.5 s)", "percentunit", [
            ("5m {{model_name}}", f"flotilla:ttft_slo_errors:ratio_rate5m{{{MODEL}}}"),
            ("1h {{model_name}}", f"flotilla:ttft_slo_errors:ratio_rate1h{{{MODEL}}}")]),
        panel("gRPC calls/s by method and code", "reqps", [("{{method}} {{code}}", 'sum by (method, code) (rate(flotilla_grpc_server_handled_total{job="flotilla-gateway"}[$__rate_interval]))')]),
    ],
}

WORKERS = {
    "uid": "flotilla-workers", "title": "Flotilla / Workers",
    "variables": [("model_name", "label_values(flotilla_kv_cache_usage_perc, model_name)"),
                  ("instance", 'label_values(flotilla_kv_cache_usage_perc{model_name=~"$model_name"}, instance)')],
    "panels": [
        panel("Requests running", "short", [("{{instance}}", f'flotilla_num_requests_running{{{MODEL}, instance=~"$instance"}}')]),
        panel("Requests waiting", "short", [("{{instance}}", f'flotilla_num_requests_waiting{{{MODEL}, instance=~"$instance"}}')]),
        panel("KV-cache usage", "percentunit", [("{{instance}}", f'flotilla_kv_cache_usage_perc{{{MODEL}, instance=~"$instance"}}')]),
        panel("Generated tokens/s", "short", [("{{instance}}", f'sum by (instance) (rate(flotilla_generation_tokens_total{{{MODEL}, instance=~"$instance"}}[$__rate_interval]))')]),
        panel("Prefilled prompt tokens/s", "short", [("{{instance}}", f'sum by (instance) (rate(flotilla_prompt_tokens_total{{{MODEL}, instance=~"$instance"}}[$__rate_interval]))')],
              "Prefix-cache hits excluded"),
        panel("Engine step duration", "s", quantiles("flotilla_step_duration_seconds", f'{MODEL}, instance=~"$instance"', by="instance")),
        panel("Tokens per step", "short", quantiles("flotilla_iteration_tokens_total", f'{MODEL}, instance=~"$instance"', by="instance")),
        panel("Preemptions/s", "short", [("{{instance}}", f'sum by (instance) (rate(flotilla_num_preemptions_total{{{MODEL}, instance=~"$instance"}}[$__rate_interval]))')]),
        panel("Prefix-cache hit rate", "percentunit", [("{{instance}}",
              f'sum by (instance) (rate(flotilla_prefix_cache_hits_total{{{MODEL}, instance=~"$instance"}}[$__rate_interval])) / '
              f'sum by (instance) (rate(flotilla_prefix_cache_queries_total{{{MODEL}, instance=~"$instance"}}[$__rate_interval]))')]),
        panel("Matmul FLOP/s", "short", [("{{instance}}", 'sum by (instance) (rate(flotilla_worker_matmul_flops_total{instance=~"$instance"}[$__rate_interval]))')]),
        panel("gRPC calls/s by method and code", "reqps", [("{{method}} {{code}}", 'sum by (method, code) (rate(flotilla_grpc_server_handled_total{job="flotilla-worker", instance=~"$instance"}[$__rate_interval]))')]),
        panel("Workers up", "short", [("{{instance}}", 'up{job="flotilla-worker"}')]),
    ],
}

REGISTRY = {
    "uid": "flotilla-registry", "title": "Flotilla / Registry",
    "variables": [("instance", 'label_values(flotilla_registry_stored_bytes, instance)')],
    "panels": [
        panel("Bytes received/s (pushes)", "Bps", [("{{api}}", 'sum by (api) (rate(flotilla_registry_bytes_received_total{instance=~"$instance"}[$__rate_interval]))')]),
        panel("Bytes sent/s (pulls)", "Bps", [("{{api}}", 'sum by (api) (rate(flotilla_registry_bytes_sent_total{instance=~"$instance"}[$__rate_interval]))')]),
        panel("Commits pushed/s", "short", [("{{api}}", 'sum by (api) (rate(flotilla_registry_pushes_total{instance=~"$instance"}[$__rate_interval]))')]),
        panel("File downloads/s", "short", [("{{api}}", 'sum by (api) (rate(flotilla_registry_pulls_total{instance=~"$instance"}[$__rate_interval]))')]),
        panel("Errors/s by code", "short", [("{{api}} {{code}}", 'sum by (api, code) (rate(flotilla_registry_errors_total{instance=~"$instance"}[$__rate_interval]))')]),
        panel("Stored bytes", "bytes", [("{{instance}}", 'flotilla_registry_stored_bytes{instance=~"$instance"}')]),
        panel("Deduplication ratio", "short", [("{{instance}}", 'flotilla_registry_dedup_ratio{instance=~"$instance"}')],
              "Bytes of all commits' trees over stored bytes; under 1, unreferenced blobs wait for GC"),
        panel("Hub API latency", "s", quantiles("flotilla_registry_http_request_seconds", 'instance=~"$instance"', by="route")),
        panel("gRPC p99 latency by method", "s", [("{{method}}", 'histogram_quantile(0.99, sum by (method, le) (rate(flotilla_grpc_server_handling_seconds_bucket{job="flotilla-registry", instance=~"$instance"}[$__rate_interval])))')]),
        panel("gRPC calls/s by method and code", "reqps", [("{{method}} {{code}}", 'sum by (method, code) (rate(flotilla_grpc_server_handled_total{job="flotilla-registry", instance=~"$instance"}[$__rate_interval]))')]),
    ],
}

PREPROCESS = {
    "uid": "flotilla-preprocess", "title": "Flotilla / Preprocess",
    "variables": [("instance", 'label_values(flotilla_preprocess_cached_models, instance)')],
    "panels": [
        panel("Tokens/s by RPC", "short", [("{{rpc}}", 'sum by (rpc) (rate(flotilla_preprocess_tokens_total{instance=~"$instance"}[$__rate_interval]))')]),
        panel("Input bytes/s by RPC", "Bps", [("{{rpc}}", 'sum by (rpc) (rate(flotilla_preprocess_input_bytes_total{instance=~"$instance"}[$__rate_interval]))')]),
        panel("Model-cache hit rate", "percentunit", [("{{instance}}",
              'sum by (instance) (rate(flotilla_preprocess_model_cache_lookups_total{result="hit", instance=~"$instance"}[$__rate_interval])) / '
              'sum by (instance) (rate(flotilla_preprocess_model_cache_lookups_total{instance=~"$instance"}[$__rate_interval]))')]),
        panel("Images/s", "short", [("{{instance}}", 'sum by (instance) (rate(flotilla_preprocess_images_total{instance=~"$instance"}[$__rate_interval]))')]),
        panel("Cached models", "short", [("{{instance}}", 'flotilla_preprocess_cached_models{instance=~"$instance"}')]),
        panel("gRPC p99 latency by method", "s", [("{{method}}", 'histogram_quantile(0.99, sum by (method, le) (rate(flotilla_grpc_server_handling_seconds_bucket{job="flotilla-preprocess", instance=~"$instance"}[$__rate_interval])))')]),
        panel("gRPC calls/s by method and code", "reqps", [("{{method}} {{code}}", 'sum by (method, code) (rate(flotilla_grpc_server_handled_total{job="flotilla-preprocess", instance=~"$instance"}[$__rate_interval]))')]),
    ],
}

DASHBOARDS = {"gateway": GATEWAY, "workers": WORKERS, "registry": REGISTRY, "preprocess": PREPROCESS}


def variable(name: str, query: str) -> dict:
    return {"name": name, "label": name, "type": "query", "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "query": {"query": query, "refId": name}, "definition": query, "refresh": 2,
            "includeAll": True, "multi": True, "allValue": ".*", "current": {"text": "All", "value": "$__all"},
            "sort": 1}


def dashboard(spec: dict) -> dict:
    panels = []
    for index, item in enumerate(spec["panels"]):
        panels.append({
            "id": index + 1, "type": "timeseries", "title": item["title"], "description": item["description"],
            "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "gridPos": {"h": 8, "w": 12, "x": 12 * (index % 2), "y": 8 * (index // 2)},
            "fieldConfig": {"defaults": {"unit": item["unit"]}, "overrides": []},
            "options": {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}},
            "targets": [{"refId": chr(ord("A") + number), "expr": expr, "legendFormat": legend,
                         "datasource": {"type": "prometheus", "uid": "${datasource}"}}
                        for number, (legend, expr) in enumerate(item["targets"])],
        })
    datasource = {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus",
                  "current": {"text": "Prometheus", "value": "prometheus"}}
    return {
        "uid": spec["uid"], "title": spec["title"], "tags": ["flotilla"], "timezone": "utc",
        "schemaVersion": 39, "version": 1, "editable": True, "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": [datasource, *(variable(name, query) for name, query in spec["variables"])]},
        "annotations": {"list": []}, "links": [], "panels": panels,
    }


def render_all() -> dict[str, str]:
    return {f"{name}.json": json.dumps(dashboard(spec), indent=2) + "\n" for name, spec in DASHBOARDS.items()}


if __name__ == "__main__":
    for file_name, text in render_all().items():
        (HERE / file_name).write_text(text)
        print(f"wrote {HERE / file_name}")
