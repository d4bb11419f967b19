"""Auto's policy as a table: measurements in, a decision out. No thread, lock, load or compile runs here."""

import pytest

from deit_demo.serve.policy import Decision, Measured, Rules, beats_original, choose

ORIGINAL_TIMED = Measured("original", median_ms=10.0)


def m(name, ms, agreement=1.0, compiles=False, status="ok", reason=""):
    return Measured(name, status, ms, agreement, compiles, reason)


CASES = {
    "nothing but the original": (
        [ORIGINAL_TIMED], dict(variant="original", fallback="original", rejected={})),
    "the fastest verified wins": (
        [ORIGINAL_TIMED, m("onnx_int8", 4.0), m("openvino_int8", 3.0)],
        dict(variant="openvino_int8", agreement=1.0, fallback="original")),
    "slower than the original: the original": (
        [ORIGINAL_TIMED, m("onnx_int8", 12.0)], dict(variant="original", agreement=None)),
    "an answer that differs never serves, however fast": (
        [ORIGINAL_TIMED, m("onnx_int8", 1.0, agreement=0.875), m("pt2e_int8", 6.0)],
        dict(variant="pt2e_int8", rejected={"onnx_int8": "rejected: top-1 agreement 0.875 is below 1"})),
    "a candidate the timing loop rejected keeps its reason": (
        [ORIGINAL_TIMED, m("onnx_int8", None, status="rejected", reason="answers differ on 2/8 check inputs")],
        dict(variant="original", rejected={"onnx_int8": "answers differ on 2/8 check inputs"})),
    "an unavailable one says why on one line": (
        [ORIGINAL_TIMED,
         m("openvino_int8", None, status="unavailable", reason="openvino is not installed\nmore detail")],
        dict(variant="original", rejected={"openvino_int8": "unavailable: openvino is not installed"})),
    "a compiled graph gets the fastest plain stand-in": (
        [ORIGINAL_TIMED, m("pt2e_int8", 2.0, compiles=True), m("onnx_int8", 5.0), m("scripted_int8", 4.0)],
        dict(variant="pt2e_int8", fallback="scripted_int8", fallback_agreement=1.0)),
    "a compiled graph with no plain one verified: the original stands in": (
        [ORIGINAL_TIMED, m("pt2e_int8", 2.0, compiles=True), m("onnx_int8", 1.0, agreement=0.5)],
        dict(variant="pt2e_int8", fallback="original", fallback_agreement=None)),
    "a plain winner needs no stand-in": (
        [ORIGINAL_TIMED, m("pt2e_int8", 3.0, compiles=True), m("onnx_int8", 2.0)],
        dict(variant="onnx_int8", fallback="original")),
    "ties keep the order given": (
        [ORIGINAL_TIMED, m("onnx_int8_static", 4.0), m("onnx_int8", 4.0)], dict(variant="onnx_int8_static")),
}


@pytest.mark.parametrize("measured, expected", CASES.values(), ids=CASES.keys())
def test_the_policy_decides_from_its_measurements_alone(measured, expected):
    decision = choose(measured)
    assert isinstance(decision, Decision)
    for field, value in expected.items():
        assert getattr(decision, field) == value, (field, decision)
    # every timed one that may serve is in the medians, the original included; none that may not
    assert set(decision.median_ms) == {x.variant for x in measured if x.variant not in decision.rejected
                                       and x.median_ms is not None}


def test_the_speedup_is_the_originals_median_over_the_choice():
    decision = choose([ORIGINAL_TIMED, m("onnx_int8", 4.0)])
    assert decision.speedup == pytest.approx(2.5)
    assert choose([ORIGINAL_TIMED]).speedup is None


def test_the_rules_are_data_too():
    measured = [ORIGINAL_TIMED, m("onnx_int8", 4.0, agreement=0.9)]
    assert choose(measured).variant == "original"
    assert choose(measured, Rules(min_agreement=0.875)).variant == "onnx_int8"


@pytest.mark.parametrize("candidate, serves", [
    (m("onnx_int8", 4.0), True),
    (m("onnx_int8", 11.0), False),
    (m("onnx_int8", 4.0, agreement=0.75), False),
    (m("onnx_int8", None, status="failed", reason="failed while loading"), False),
], ids=["faster and verified", "slower", "answers differ", "failed"])
def test_a_first_candidate_serves_meanwhile_only_when_verified_and_faster(candidate, serves):
    assert beats_original(candidate, ORIGINAL_TIMED) is serves
