"""The alert rules: valid for promtool, behaving as intended on example series, each with a runbook."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.helm import CHART, ROOT, find, render

ALERTS = CHART / "files" / "alerts.yaml"
RUNBOOKS = ROOT / "docs" / "runbooks"
HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def promtool() -> str:
    # Debian's prometheus package, installed by hack/install-simdeps.sh, ships promtool beside it.
    found = shutil.which("promtool")
    assert found, "promtool missing: run `make simdeps` (Debian's prometheus package)"
    return found


def _alerts() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def _rendered_rule() -> dict[str, Any]:
    (rule,) = find(render("--set", "monitoring.prometheusRule.enabled=true"), "PrometheusRule")
    return rule


def test_the_rule_file_and_the_rendered_prometheus_rule_pass_promtool(promtool: str, tmp_path: Path) -> None:
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(yaml.safe_dump(_rendered_rule()["spec"]))
    result = subprocess.run(
        [promtool, "check", "rules", str(ALERTS), str(rendered)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(f"SUCCESS: {len(_alerts())} rules found") == 2


def test_the_alerts_fire_on_the_series_they_are_for_and_not_otherwise(promtool: str, tmp_path: Path) -> None:
    rules = yaml.safe_load(ALERTS.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations")
    (tmp_path / "alerts.yaml").write_text(yaml.safe_dump(rules))
    shutil.copy(HERE / "alerts_test.yaml", tmp_path / "alerts_test.yaml")
    result = subprocess.run(
        [promtool, "test", "rules", str(tmp_path / "alerts_test.yaml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    tested = {case["alertname"] for test in yaml.safe_load((HERE / "alerts_test.yaml").read_text())["tests"]
              for case in test["alert_rule_test"]}  # fmt: skip
    assert tested == {a["alert"] for a in _alerts()}, "every alert has a promtool test"


def test_every_alert_has_a_severity_a_summary_and_a_runbook() -> None:
    rendered = {r["alert"]: r for g in _rendered_rule()["spec"]["groups"] for r in g["rules"]}
    for alert in _alerts():
        name = alert["alert"]
        assert alert["labels"]["severity"] in ("critical", "warning", "info"), name
        assert alert["annotations"]["summary"], name
        runbook = RUNBOOKS / f"{name}.md"
        assert runbook.is_file(), f"{name}: docs/runbooks/{name}.md is missing"
        assert rendered[name]["annotations"]["runbook_url"].endswith(f"/docs/runbooks/{name}.md")


SECTIONS = ("## Symptom", "## What it means", "## Diagnose", "## Mitigate", "## Escalate")


@pytest.mark.parametrize("runbook", sorted(RUNBOOKS.glob("*.md")), ids=lambda p: p.stem)
def test_each_runbook_is_for_an_alert_and_has_every_section(runbook: Path) -> None:
    if runbook.name == "README.md":
        names = {a["alert"] for a in _alerts()}
        assert {line.split("](")[1].split(")")[0][:-3] for line in runbook.read_text().splitlines()
                if line.startswith("| [")} == names  # fmt: skip
        return
    assert runbook.stem in {a["alert"] for a in _alerts()}, f"{runbook.name} belongs to no alert"
    text = runbook.read_text()
    for section in SECTIONS:
        assert section in text, f"{runbook.name} has no {section!r}"
    assert "kubectl" in text
