"""Every dashboard query and every rule runs against a real Prometheus scraping a real local mesh
under load: registry, preprocess, a gateway and two workers serving SmolLM2 pulled from the registry.
The load touches what each panel shows — pushes, pulls, Hub API calls (one failing), tokenization,
chat completions with a shared prefix, and a worker killed mid-stream so that requests migrate. A
query that names a metric no service exported fails, a panel with no series fails, and a rule
Prometheus could not evaluate fails."""
from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from conftest import binary, launch_service  # noqa: F401  (tests/conftest.py)
from deploy.conftest import REPOSITORY, run, tool
from models.conftest import smollm2  # noqa: F401  (the SmolLM2 checkpoint fixture)

PROMETHEUS = REPOSITORY / "deploy" / "prometheus"
GRAFANA = REPOSITORY / "deploy" / "grafana"
# Rule groups over Kubernetes' own metrics (the kubelet's): no data without a cluster.
CLUSTER_ONLY_GROUPS = {"flotilla-kubernetes"}
SYSTEM_PROMPT = "You are a terse assistant. Answer in one short sentence, and never use lists. " * 4
PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
                   "offset", "inf", "nan"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def http_json(url: str, data: dict | None = None, timeout: float = 120) -> dict:
    request = urllib.request.Request(url, data=json.dumps(data).encode() if data is not None else None,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def metric_names(expression: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers outside label matchers, grouping clauses,
    range selectors and strings that are not function calls or keywords."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expression)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = re.sub(r"(?<![A-Za-z0-9_:])[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?", "", text)   # numbers (1e9)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        followed_by_call = text[match.end():].lstrip().startswith("(")
        if not followed_by_call and match.group(0).lower() not in PROMQL_KEYWORDS:
            names.add(match.group(0))
    return names


def dashboard_queries() -> list[tuple[str, str]]:
    queries = []
    for path in sorted(GRAFANA.glob("*.json")):
        dashboard = json.loads(path.read_text())
        for panel in dashboard["panels"]:
            for target in panel["targets"]:
                queries.append((f"{path.stem} / {panel['title']} / {target['refId']}", target["expr"]))
        for variable in dashboard["templating"]["list"]:
            if variable["type"] == "query":
                inner = re.match(r"label_values\((.*), *\w+\)$", variable["definition"]).group(1)
                queries.append((f"{path.stem} / variable {variable['name']}", inner))
    return queries


def grafana_to_promql(expression: str) -> str:
    # What Grafana substitutes: the rate window (4 scrape intervals at least) and "All" variables.
    return (expression.replace("$__rate_interval", "1m").replace('"$model_name"', '".*"')
            .replace('"$instance"', '".*"'))


class Prometheus:
    def __init__(self, directory: Path, jobs: dict[str, list[str]]):
        directory.mkdir(parents=True, exist_ok=True)
        rules = directory / "rules.yml"
        rules.write_text((PROMETHEUS / "rules.yml").read_text())
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(rules)],
            "scrape_configs": [{"job_name": job, "static_configs": [{"targets": targets}]}
                               for job, targets in jobs.items()],
        }
        config_path = directory / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config))
        checked = run([tool("promtool"), "check", "config", str(config_path)])
        assert checked.returncode == 0, checked.stdout + checked.stderr
        self.address = f"127.0.0.1:{free_port()}"
        self.log_path = directory / "prometheus.log"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [tool("prometheus"), f"--config.file={config_path}", f"--storage.tsdb.path={directory / 'data'}",
                 f"--web.listen-address={self.address}", "--log.level=warn"], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://{self.address}/-/ready", timeout=2)
                return
            except (urllib.error.URLError, ConnectionError):
                assert self.process.poll() is None, self.log_path.read_text()[-3000:]
                assert time.monotonic() < deadline, "Prometheus not ready after 60 s"
                time.sleep(0.2)

    def api(self, path: str, **parameters) -> dict:
        url = f"http://{self.address}/api/v1/{path}"
        if parameters:
            url += "?" + urllib.parse.urlencode(parameters)
        try:
            return http_json(url, timeout=30)
        except urllib.error.HTTPError as error:   # 400/422: the body says what is wrong with the query
            return json.loads(error.read())

    def query(self, expression: str) -> dict:
        return self.api("query", query=expression)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def chat(gateway_http: str, question: str, max_tokens: int, stream: bool = False) -> str:
    body = {"model": "smollm2", "max_tokens": max_tokens, "stream": stream,
            "messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": question}]}
    request = urllib.request.Request(f"http://{gateway_http}/v1/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as response:
        return response.read().decode()


def stream_chat_until_killed(gateway_http: str, index: int, started: threading.Event) -> str:
    body = {"model": "smollm2", "max_tokens": 48, "stream": True, "ignore_eos": True,
            "messages": [{"role": "user", "content": f"Count slowly from {index} to one hundred."}]}
    request = urllib.request.Request(f"http://{gateway_http}/v1/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    chunks = 0
    finish = ""
    with urllib.request.urlopen(request, timeout=600) as response:
        for line in response:
            line = line.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[len("data: "):])
            for choice in event.get("choices", []):
                finish = choice.get("finish_reason") or finish
            chunks += 1
            if chunks >= 4:
                started.set()
    return finish


@pytest.fixture(scope="module")
def loaded_mesh(tmp_path_factory, stubs, smollm2):  # noqa: F811
    """The mesh and its Prometheus, after the load below; yields the Prometheus."""
    directory = tmp_path_factory.mktemp("live-metrics")
    started = []
    prometheus = None
    try:
        registry = launch_service("registry", directory / "registry")
        started.append(registry)
        pushed = subprocess.run([str(binary("flotilla")), "push", str(smollm2 / "checkpoint"), "acme/smollm2",
                                 "--registry", registry.grpc_address, "--json"], capture_output=True, text=True)
        assert pushed.returncode == 0, pushed.stderr
        preprocess = launch_service("preprocess", directory / "preprocess", [f"--registry={registry.grpc_address}"])
        started.append(preprocess)
        gateway = launch_service("gateway", directory / "gateway", [f"--registry={registry.grpc_address}"])
        started.append(gateway)
        workers = []
        for replica in range(2):
            worker = launch_service(
                "worker", directory / f"worker-{replica}",
                ["--model=acme/smollm2@main", "--served_model_name=smollm2", f"--replica={replica}",
                 f"--registry={registry.grpc_address}", f"--gateways={gateway.grpc_address}",
                 "--kv_cache_memory=134217728", "--drain_seconds=10"], timeout=300)
            started.append(worker)
            workers.append(worker)
        prometheus = Prometheus(directory / "prometheus", {
            "flotilla-registry": [registry.http_address], "flotilla-preprocess": [preprocess.http_address],
            "flotilla-gateway": [gateway.http_address], "flotilla-worker": [w.http_address for w in workers]})

        deadline = time.monotonic() + 120
        while "smollm2" not in {m["id"] for m in http_json(f"http://{gateway.http_address}/v1/models")["data"]}:
            assert time.monotonic() < deadline, "smollm2 never registered with the gateway"
            time.sleep(0.2)

        # Registry: the Hub API (model_info), and one request for a repository that does not exist.
        http_json(f"http://{registry.http_address}/api/models/acme/smollm2")
        with pytest.raises(urllib.error.HTTPError):
            http_json(f"http://{registry.http_address}/api/models/acme/missing")
        collected = subprocess.run([str(binary("flotilla")), "gc", "--registry", registry.grpc_address],
                                   capture_output=True, text=True)
        assert collected.returncode == 0, collected.stderr
        # Preprocess: tokenization with the pushed tokenizer, twice (a cache miss, then hits).
        preprocess_stub = stubs.preprocess_pb2_grpc.PreprocessServiceStub(preprocess.channel())
        for _ in range(2):
            preprocess_stub.Tokenize(stubs.preprocess_pb2.TokenizeRequest(
                model=stubs.common_pb2.ModelReference(namespace="acme", name="smollm2"),
                texts=["Hello from the deploy tests.", SYSTEM_PROMPT]), timeout=120)
        # Gateway and workers: chat completions sharing a system prompt (prefix-cache hits).
        questions = [f"What is {number} plus {number}?" for number in range(8)]
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda question: chat(gateway.http_address, question, 8), questions))
        # Failover: kill one worker while streams run on both; the gateway migrates its requests.
        streams_started = threading.Event()
        with ThreadPoolExecutor(4) as pool:
            finishes = pool.map(lambda index: stream_chat_until_killed(gateway.http_address, index, streams_started),
                                range(4))
            assert streams_started.wait(timeout=300)
            workers[1].process.send_signal(signal.SIGKILL)
            assert list(finishes) == ["length"] * 4

        # Prometheus has scraped everything once its series show the last counts.
        deadline = time.monotonic() + 60
        while not prometheus.query("flotilla_worker_failovers_total")["data"]["result"]:
            assert time.monotonic() < deadline, "Prometheus never saw the failover"
            time.sleep(0.5)
        time.sleep(3)   # a few more scrapes and rule evaluations
        yield prometheus
    finally:
        if prometheus is not None:
            prometheus.stop()
        for service in reversed(started):
            service.stop()


@pytest.fixture(scope="module")
def exported_names(loaded_mesh) -> set[str]:
    return set(loaded_mesh.api("label/__name__/values")["data"])


@pytest.fixture(scope="module")
def recorded_names() -> set[str]:
    rules = yaml.safe_load((PROMETHEUS / "rules.yml").read_text())
    return {rule["record"] for group in rules["groups"] for rule in group["rules"] if "record" in rule}


def test_metric_name_extraction():
    assert metric_names('histogram_quantile(0.99, sum by (model_name, le) (rate(a_bucket{le="2.5", x=~"$y"}[5m])))') == {"a_bucket"}
    assert metric_names("flotilla:x:rate5m > (14.4 * 0.01) and b > clamp_min(sum by (m) (c), 8)") == {"flotilla:x:rate5m", "b", "c"}
    assert metric_names("d < 0.8 and e > 1e9") == {"d", "e"}


@pytest.mark.slow
def test_every_dashboard_query_has_data_from_exported_metrics(loaded_mesh, exported_names, recorded_names):
    problems = []
    for where, expression in dashboard_queries():
        unknown = metric_names(expression) - exported_names - recorded_names
        if unknown:
            problems.append(f"{where}: no service exported {sorted(unknown)}")
            continue
        answer = loaded_mesh.query(grafana_to_promql(expression))
        if answer["status"] != "success":
            problems.append(f"{where}: {answer.get('error')}")
        elif not answer["data"]["result"]:
            problems.append(f"{where}: no series under load: {expression}")
    assert not problems, "\n".join(problems)


@pytest.mark.slow
def test_every_rule_names_exported_metrics_and_evaluates(loaded_mesh, exported_names, recorded_names):
    rules = yaml.safe_load((PROMETHEUS / "rules.yml").read_text())
    problems = []
    for group in rules["groups"]:
        if group["name"] in CLUSTER_ONLY_GROUPS:
            continue
        for rule in group["rules"]:
            name = rule.get("record") or rule.get("alert")
            unknown = metric_names(rule["expr"]) - exported_names - recorded_names
            if unknown:
                problems.append(f"{name}: no service exported {sorted(unknown)}")
            answer = loaded_mesh.query(rule["expr"])
            if answer["status"] != "success":
                problems.append(f"{name}: {answer.get('error')}")
    assert not problems, "\n".join(problems)
    for group in loaded_mesh.api("rules")["data"]["groups"]:
        for rule in group["rules"]:
            assert rule["health"] == "ok", f"{rule['name']}: {rule.get('lastError')}"


@pytest.mark.slow
def test_recording_rules_produce_series_under_load(loaded_mesh):
    for name in ("flotilla:requests:rate5m", "flotilla:generation_tokens:rate5m",
                 "flotilla:time_to_first_token_seconds:p99_5m", "flotilla:prefix_cache_hit_ratio:rate5m",
                 "flotilla:ttft_slo_errors:ratio_rate5m"):
        assert loaded_mesh.query(name)["data"]["result"], f"{name} recorded nothing"
