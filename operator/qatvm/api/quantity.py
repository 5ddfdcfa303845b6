"""Kubernetes resource quantities (`512Mi`, `2G`, `1.5Gi`, `200000000000m`, `1e9`) as whole bytes.

The API server is the judge of what a quantity is (the CRD checks `isQuantity` and memory's
bounds); the agent must then read every such value the same way. lightkube's parser does, save
one spelling: Kubernetes also takes an upper-case exponent (`1E9`, while `1E` alone is exa).
"""

from __future__ import annotations

import re
from decimal import ROUND_CEILING

from lightkube.utils.quantity import parse_quantity

_UPPER_EXPONENT = re.compile(r"E(?=[+-]?[0-9]+$)")


def parse_bytes(quantity: str | int) -> int:
    """The number of bytes a quantity names, rounded up as the API server rounds memory."""
    if isinstance(quantity, int):
        return quantity
    try:
        value = parse_quantity(_UPPER_EXPONENT.sub("e", quantity))
    except ValueError as error:
        raise ValueError(f"{quantity!r} is not a Kubernetes quantity") from error
    assert value is not None
    return int(value.to_integral_value(rounding=ROUND_CEILING))
