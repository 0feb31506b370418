"""Verdicts: three singletons with the kernel's codes, parsed from names."""

from __future__ import annotations

import pickle

import pytest

from pktlab import ACCEPT, DROP, REPEAT, Verdict


def test_codes_are_the_kernels() -> None:
    assert (ACCEPT.code, DROP.code, REPEAT.code) == (1, 0, 4)  # NF_ACCEPT, NF_DROP, NF_REPEAT
    assert Verdict.all() == [ACCEPT, DROP, REPEAT]


def test_parse_takes_names_in_any_case_and_verdicts() -> None:
    assert Verdict.parse("Drop") is DROP and Verdict.parse(ACCEPT) is ACCEPT and Verdict.parse("REPEAT") is REPEAT
    for bad in ("reject", 1, None):
        with pytest.raises(ValueError, match="is not a verdict; use 'accept', 'drop' or 'repeat'"):
            Verdict.parse(bad)


def test_they_stay_singletons_through_pickle() -> None:
    assert pickle.loads(pickle.dumps(DROP)) is DROP
    assert str(DROP) == "drop" and repr(DROP) == "DROP"
