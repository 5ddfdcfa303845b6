"""One grammar: every quantity the API server takes, the agent reads as the same number of bytes."""

from __future__ import annotations

import pytest

from qatvm.api.quantity import parse_bytes
from qatvm.testing.kubectl import Kubectl


@pytest.mark.parametrize(
    ("quantity", "expected"),
    [
        ("128Mi", 128 * 2**20),
        ("2Gi", 2 * 2**30),
        ("1.5Gi", 3 * 2**29),
        ("1G", 10**9),
        ("500k", 500_000),
        ("1e3", 1000),
        ("1E9", 10**9),
        ("1E", 10**18),
        ("1e+3", 1000),
        ("0.5", 1),
        ("5.", 5),
        (".5Ki", 512),
        ("200000000000m", 200_000_000),
        ("+.5Gi", 2**29),
        ("1.G", 10**9),
        ("Gi", 0),
        ("e3", 0),
        ("1073741824", 2**30),
        (4096, 4096),
    ],
)
def test_parse_bytes(quantity: str | int, expected: int) -> None:
    assert parse_bytes(quantity) == expected


@pytest.mark.parametrize("bad", ["", "lots", "1GB", "1.2.3Mi", "2 Gi", "1e", "0x10", " 1"])
def test_parse_bytes_refuses_what_the_api_server_refuses(bad: str) -> None:
    with pytest.raises(ValueError, match="not a Kubernetes quantity"):
        parse_bytes(bad)


# Spellings at the edges of Kubernetes' grammar: exponents in both cases and with signs,
# milli, bare dots, every suffix, and near-misses the API server refuses.
SPELLINGS = [
    "1", "1.", ".5", "+1", "0", "1e3", "1E3", "1e+3", "1E+3", "1e-3", "1E-3", "1e0", "12e2Ki",
    "200000000000m", "1500m", "1m", "0.0001", "1k", "1M", "1G", "1T", "1P", "1E", "1Ki", "1Mi",
    "1Gi", "1Ti", "1Pi", "1Ei", "1.5Gi", "0.1Gi", "16Ti", "123456789012345678", "+.5Gi", ".5e3",
    "1.G", "00012Mi", "Gi", "e3", "+", ".",
    "1K", "1GB", "1Zi", "1e", "1.2.3", "1 Gi", "0x10", "1ki", "1mi", "12e2Ki",
]


def test_the_agent_reads_every_quantity_the_api_server_accepts_as_it_does(kubectl: Kubectl, namespace: str) -> None:
    """The API server writes back each accepted quantity in its canonical form (a LimitRange
    canonicalizes, a CRD string would not); the agent must read both spellings as one value."""
    accepted = {}
    for index, spelling in enumerate(SPELLINGS):
        limits = {
            "apiVersion": "v1", "kind": "LimitRange", "metadata": {"name": f"q{index}", "namespace": namespace},
            "spec": {"limits": [{"type": "Container", "max": {"memory": spelling}}]},
        }
        if kubectl.run("apply", "-f", "-", input=limits, check=False).returncode == 0:
            canonical = kubectl.json("get", "limitrange", f"q{index}", "-n", namespace)["spec"]["limits"][0]["max"]["memory"]
            accepted[spelling] = canonical
    assert {s: accepted[s] for s in {"1K", "1GB", "1Zi", "0x10", "12e2Ki"} & set(accepted)} == {}
    assert (accepted["200000000000m"], accepted["1E3"], accepted["+.5Gi"], accepted["Gi"]) == ("200M", "1k", "512Mi", "0")
    disagreements = {s: (parse_bytes(s), c, parse_bytes(c)) for s, c in accepted.items() if parse_bytes(s) != parse_bytes(c)}
    assert not disagreements
