"""Ask a Prometheus server an instant PromQL query, as Grafana or promtool would."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from typing import Any


def query(url: str, promql: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"{url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}", timeout=10) as response:
        answer = json.loads(response.read())
    assert answer["status"] == "success", answer
    return answer["data"]["result"]  # type: ignore[no-any-return]


def by_label(url: str, promql: str, label: str) -> dict[str, float]:
    return {r["metric"][label]: float(r["value"][1]) for r in query(url, promql)}
