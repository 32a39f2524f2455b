"""deploy/'s Prometheus configuration and Grafana dashboards, checked with the real promtool: the
rules parse and their unit tests (deploy/prometheus/rules_test.yml) pass, both scrape configs are
valid, and the committed dashboards are what deploy/grafana/generate.py writes."""
from __future__ import annotations

import importlib.util

import yaml

from deploy.conftest import REPOSITORY, run, tool

PROMETHEUS = REPOSITORY / "deploy" / "prometheus"
GRAFANA = REPOSITORY / "deploy" / "grafana"


def test_promtool_accepts_the_rules():
    result = run([tool("promtool"), "check", "rules", str(PROMETHEUS / "rules.yml")])
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_unit_tests_pass():
    result = run([tool("promtool"), "test", "rules", "rules_test.yml"], cwd=PROMETHEUS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_unit_test():
    rules = yaml.safe_load((PROMETHEUS / "rules.yml").read_text())
    alerts = {rule["alert"] for group in rules["groups"] for rule in group["rules"] if "alert" in rule}
    tests = yaml.safe_load((PROMETHEUS / "rules_test.yml").read_text())["tests"]
    tested = {case["alertname"] for test in tests for case in test.get("alert_rule_test", [])}
    assert alerts - tested - {"FlotillaHighErrorRate", "FlotillaTTFTBudgetBurnSlow", "FlotillaRegistryDiskFullIn24h"} == set()


def test_promtool_accepts_the_local_mesh_config():
    result = run([tool("promtool"), "check", "config", str(PROMETHEUS / "prometheus-local.yml")])
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_accepts_the_kubernetes_config(tmp_path):
    # Debian's Prometheus is built without Kubernetes service discovery, so its promtool refuses
    # kubernetes_sd_configs; everything else (relabelling, rule files) is checked with a static
    # discovery in its place.
    config = yaml.safe_load((PROMETHEUS / "prometheus-kubernetes.yml").read_text())
    for scrape in config["scrape_configs"]:
        assert scrape.pop("kubernetes_sd_configs") == [{"role": "pod"}]
        scrape["static_configs"] = [{"targets": ["127.0.0.1:7701"]}]
    config["rule_files"] = [str(PROMETHEUS / "rules.yml")]
    path = tmp_path / "prometheus-kubernetes.yml"
    path.write_text(yaml.safe_dump(config))
    result = run([tool("promtool"), "check", "config", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboards_are_generated_from_generate_py():
    spec = importlib.util.spec_from_file_location("generate_dashboards", GRAFANA / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    expected = module.render_all()
    committed = {path.name: path.read_text() for path in GRAFANA.glob("*.json")}
    assert committed == expected, "run python3 deploy/grafana/generate.py and commit the JSON"
