"""The wire's byte and message counts."""

from __future__ import annotations

import pytest

from privlab.wire import SERVER, Wire, client


@pytest.mark.parametrize("outward", [True, False])
def test_count_star_equals_one_count_per_message(outward: bool) -> None:
    spokes = [client(k) for k in (3, 0, 7, 3)]  # a repeated spoke counts twice
    one, star = Wire(), Wire()
    one.count(1, client(9), SERVER, 5)  # traffic already on the round
    star.count(1, client(9), SERVER, 5)
    for party in spokes:
        if outward:
            one.count(1, SERVER, party, 120)
        else:
            one.count(1, party, SERVER, 120)
    star.count_star(1, SERVER, spokes, 120, outward=outward)
    star.count_star(1, SERVER, [], 120, outward=outward)
    assert dict(star.bytes_by_round) == dict(one.bytes_by_round) == {1: 5 + 4 * 120}
    assert star.traffic[1] == one.traffic[1]
