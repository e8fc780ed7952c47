"""The 1F1B schedule simulation (plan/schedule_sim.py) against hand-computed timelines, and the
coupled / decoupled step times it predicts for the plan's layouts."""
import pytest

from megatron_omni.config.mixes import PHASE_MIXES
from megatron_omni.plan.schedule_sim import PLAN_LAYOUTS, one_f_one_b, plan_layout, simulate, stage_order


def test_stage_order_is_megatrons_1f1b():
    assert stage_order(2, 0, 3) == [("F", 0), ("F", 1), ("B", 0), ("F", 2), ("B", 1), ("B", 2)]
    assert stage_order(2, 1, 3) == [("F", 0), ("B", 0), ("F", 1), ("B", 1), ("F", 2), ("B", 2)]
    assert stage_order(4, 0, 2) == [("F", 0), ("F", 1), ("B", 0), ("B", 1)]


def test_uniform_pipeline_takes_micro_plus_bubble():
    # pp 2, 2 micro-batches, f = 1, b = 2 (by hand): s0 F0 0-1, s1 F0 1-2, s1 B0 2-4, s0 F1 1-2,
    # s0 B0 4-6, s1 F1 4-5, s1 B1 5-7, s0 B1 7-9  ->  9 = (m + pp - 1)(f + b)
    assert one_f_one_b([[1, 1], [1, 1]], [[2, 2], [2, 2]]) == 9
    assert one_f_one_b([[1] * 5] * 4, [[2] * 5] * 4) == (5 + 3) * 3


def test_a_slow_first_micro_batch_on_stage_0():
    # micro-batch 0 takes 3 s forward on stage 0 (its media); by hand: s0 F0 0-3, F1 3-4;
    # s1 F0 3-4, B0 4-6; s0 B0 6-8; s1 F1 6-7, B1 7-9; s0 B1 9-11
    assert one_f_one_b([[3, 1], [1, 1]], [[2, 2], [2, 2]]) == 11
    # with a 0.5 s hop per send: s1 F0 3.5-4.5, B0 -6.5; s0 B0 7-9; s1 F1 6.5-7.5, B1 -9.5; s0 B1 10-12
    assert one_f_one_b([[3, 1], [1, 1]], [[2, 2], [2, 2]], hop=0.5) == 12


@pytest.mark.parametrize("name", list(PLAN_LAYOUTS))
def test_plan_layouts(name):
    cfg, dp = plan_layout(name)
    times = simulate(cfg, dp, PHASE_MIXES[3], seed=0)
    assert times.text_only < times.coupled and times.text_only < times.decoupled
    text_only = simulate(cfg, dp, {"text": 1.0}, seed=0)
    assert text_only.coupled == pytest.approx(text_only.text_only)
    assert text_only.decoupled == pytest.approx(text_only.text_only)
