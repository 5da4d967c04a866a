"""The card top level: parameters, and the Verilator run of sim/test_cardcore.py (jobs of the
real driver and crafted faulty ones through ``CardCore``, answers compared with ``CardModel``)."""

import pytest

from actpack.hw.card import CardCore
from actpack.hw.regs import Caps, CardConfig
from actpack.sim.build import build
from actpack.sim.test_cardcore import CONFIG, PARAMS


@pytest.mark.parametrize("caps", [Caps(lanes=2), Caps(modes=frozenset()),
                                  Caps(dtypes=frozenset())])
def test_configurations_it_cannot_build_are_refused(caps):
    with pytest.raises(ValueError, match="config"):
        CardCore(config=CardConfig(caps=caps))


@pytest.mark.parametrize("kwargs", [{"max_groups": 0}, {"max_blocks": 2.5}, {"max_groups": True}])
def test_capacities_are_checked(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        CardCore(**kwargs)
    with pytest.raises(TypeError, match="CardConfig"):
        CardCore(config={"buffer_kib": 64})


def test_jobs_match_the_card_model(verilator, seed):
    sim = build(CardCore, name="cardcore", params={"config": CONFIG, **PARAMS})
    sim.run("actpack.sim.test_cardcore", env={"ACTPACK_TB_SEED": str(seed)})

