"""deploy/'s Prometheus configuration is valid for the real Prometheus tools."""
import subprocess
from pathlib import Path

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def test_promtool_accepts_the_rules():
    result = subprocess.run(["promtool", "check", "rules", str(DEPLOY / "prometheus/rules.yml")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_accepts_the_local_mesh_config():
    result = subprocess.run(["promtool", "check", "config", str(DEPLOY / "prometheus/prometheus-local.yml")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
