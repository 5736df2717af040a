"""What the httpx and requests helpers share: the second-401 choice.

No import of httpx or requests here, so each helper needs only its own
extra installed."""

from __future__ import annotations

from typing import Literal, get_args

__all__ = ["Second401", "check_second_401"]

#: What a helper does when the replay with a force-refreshed token is
#: answered 401 again: raise `StillUnauthorized` (the default) or return
#: the 401 response.
Second401 = Literal["raise", "return"]


def check_second_401(value: str) -> Second401:
    if value not in get_args(Second401):
        raise ValueError(f'second_401 must be "raise" or "return", not {value!r}')
    return value  # type: ignore[return-value]
