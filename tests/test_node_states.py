"""Which monitor status changes the agent writes at once, and which wait for the report interval."""

from typing import Any

from controller.node_states import same_state as _same_state


def _status(**monitor: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"state": "Healthy", "reason": "CheckSucceeded", "consecutiveFailures": 0}
    base.update(monitor)
    return {
        "phase": "Healthy",
        "observedGeneration": 1,
        "conditions": [{"type": "Ready", "status": "True", "reason": "CheckSucceeded", "message": "m"}],
        "monitor": base,
    }


def test_moving_numbers_and_check_times_alone_are_not_news() -> None:
    old = _status(readDelay=0.0003, lastCheck="2026-11-25T10:00:00Z", message="read delay 0.3 ms", path="/p")
    new = _status(readDelay=0.0009, lastCheck="2026-11-25T10:00:10Z", message="read delay 0.9 ms", path="/p")
    new["conditions"][0]["message"] = "other"
    assert _same_state(old, new)


def test_a_field_that_appears_is_news() -> None:
    """The first report may come before the path is known; the path must not wait for the interval."""
    assert not _same_state(_status(readDelay=0.1), _status(readDelay=0.1, path="/p", pathKind="file"))


def test_changed_text_values_phase_reason_and_generation_are_news() -> None:
    assert not _same_state(_status(path="/a"), _status(path="/b"))
    assert not _same_state(_status(), _status(reason="Other"))
    changed = _status()
    changed["observedGeneration"] = 2
    assert not _same_state(_status(), changed)
    failing = _status()
    failing["conditions"][0]["status"] = "False"
    assert not _same_state(_status(), failing)
    assert not _same_state(_status(valid=True), _status(valid=False))
