import pytest

from qatvm.api.quantity import parse_bytes


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
        ("0.5", 1),
        ("1073741824", 2**30),
        (4096, 4096),
    ],
)
def test_parse_bytes(quantity: str | int, expected: int) -> None:
    assert parse_bytes(quantity) == expected


@pytest.mark.parametrize("bad", ["", "lots", "1GB", "Gi", "-1Gi", "1.2.3Mi", "2 Gi"])
def test_parse_bytes_refuses_what_the_api_server_refuses(bad: str) -> None:
    with pytest.raises(ValueError, match="not a Kubernetes quantity"):
        parse_bytes(bad)
