"""Kubernetes resource quantities (`512Mi`, `2G`, `1.5Gi`, `200000000000m`, `1e9`) as whole bytes.

The API server is the judge of what a quantity is (the CRD checks `isQuantity` and memory's
bounds); the agent must then read every such value the same way. lightkube's parser does the
arithmetic and the suffixes; its numeral is narrower than the API server's, which also takes an
empty or dotted one (`+.5Gi` is 512Mi, `Gi` is 0) and an upper-case exponent (`1E9`, while `1E`
alone is exa), so the numeral is first rewritten into the form lightkube reads.
"""

from __future__ import annotations

import re
from decimal import ROUND_CEILING

from lightkube.utils.quantity import parse_quantity

# The API server's numeral (apimachinery's parseQuantityString): sign, digits, dot, digits, any part empty.
_NUMERAL = re.compile(r"^([+-]?)([0-9]*)(?:\.([0-9]*))?(.*)$", re.DOTALL)
_UPPER_EXPONENT = re.compile(r"^E(?=[+-]?[0-9]+$)")
# Largest first: a count is written in the largest binary unit that divides it.
_BINARY = [(suffix, 1024**power) for power, suffix in reversed(list(enumerate(("Ki", "Mi", "Gi", "Ti", "Pi", "Ei"), start=1)))]


def parse_bytes(quantity: str | int) -> int:
    """The number of bytes a quantity names, rounded up as the API server rounds memory."""
    if isinstance(quantity, int):
        return quantity
    # Always matches: every part of the numeral may be empty.
    sign, whole, fraction, suffix = _NUMERAL.match(quantity).groups()  # type: ignore[union-attr]
    try:
        if not quantity:
            raise ValueError("empty")
        value = parse_quantity(f"{sign}{whole or '0'}.{fraction or '0'}{_UPPER_EXPONENT.sub('e', suffix)}")
    except ValueError as error:
        raise ValueError(f"{quantity!r} is not a Kubernetes quantity") from error
    assert value is not None  # None only for None
    return int(value.to_integral_value(rounding=ROUND_CEILING))


def format_bytes(count: int) -> str:
    """`count` bytes as an exact quantity in the largest binary unit that divides it (`30Gi`)."""
    for suffix, unit in _BINARY:
        if count and count % unit == 0:
            return f"{count // unit}{suffix}"
    return str(count)
