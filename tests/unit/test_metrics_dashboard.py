"""The Grafana dashboard in k8s/monitoring/ queries only metrics that GET /metrics serves, with
labels they have."""

import json
import re

from ragtune.serve.metrics import ServingMetrics
from tests.conftest import REPO

DASHBOARD = REPO / "k8s" / "monitoring" / "ragtune-dashboard.json"


def _served() -> dict[str, set[str]]:
    """Every sample name the registry exposes, with its labels."""
    metrics = ServingMetrics()
    metrics.answered("chat", "rag", "m", 200, 0.1)
    metrics.generated("rag", "m", {"prompt_tokens": 1, "completion_tokens": 1}, 0.1)
    metrics.retrieved({"embed_s": 0.01, "search_s": 0.01})
    metrics.first_token_seconds.labels("rag").observe(0.1)
    metrics.overloaded.inc()
    return {s.name: set(s.labels) | ({"le"} if s.name.endswith("_bucket") else set())
            for family in metrics.registry.collect() for s in family.samples}


def test_the_dashboard_queries_only_served_metrics_and_their_labels():
    served = _served()
    panels = json.loads(DASHBOARD.read_text())["panels"]
    assert len(panels) >= 8
    queried = set()
    for target in (t for p in panels for t in p["targets"]):
        for name in re.findall(r"\bragtune_[a-z_]+", target["expr"]):
            assert name in served, f"{name} in {target['expr']!r} is not served by GET /metrics"
            queried.add(name)
        for labels in re.findall(r"by \(([^)]*)\)", target["expr"]):
            names = re.findall(r"\bragtune_[a-z_]+", target["expr"])
            for label in (x.strip() for x in labels.split(",")):
                assert all(label in served[n] for n in names), (label, target["expr"])
    # every family has a panel
    families = {re.sub(r"_(total|bucket|count|sum|created)$", "", n) for n in served}
    assert families <= {re.sub(r"_(total|bucket|count|sum|created)$", "", n) for n in queried}, families
