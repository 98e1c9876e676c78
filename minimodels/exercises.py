"""Helpers for the notebooks' exercises.

Each exercise in a notebook has a solution cell (tag ``solution``), a check cell (tag ``check``)
that calls a ``check_...(fn)`` function on the student's answer, and a hidden cell (tags
``wrong-answer`` and ``remove-cell``) that proves the check is not a rubber stamp::

    expect_failure(check_count_color, lambda scene, color: 0)

The hidden cell runs whenever the notebook runs (nbval in ``make test``), so every check is
tested both ways: the solution passes it, a wrong answer fails it.
"""

from __future__ import annotations

import contextlib
import io


def expect_failure(check, wrong, *args, **kwargs) -> str:
    """Run ``check(wrong, *args, **kwargs)`` and return the message it fails with.

    Raises AssertionError when the check accepts the wrong answer, or when it fails with
    anything but an AssertionError (a student would then see a traceback, not a hint).
    """
    if not callable(check):
        raise TypeError(f"check must be callable; got {type(check).__name__}")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            check(wrong, *args, **kwargs)
    except AssertionError as err:
        message = str(err) or "(no message)"
        print(f"{getattr(check, '__name__', 'check')} rejects a wrong answer: {message}")
        return message
    except Exception as err:  # noqa: BLE001 - the point is to report what escaped
        raise AssertionError(
            f"{getattr(check, '__name__', 'check')} failed with {type(err).__name__}: {err}; "
            "a check should fail with an AssertionError that says what is off"
        ) from err
    raise AssertionError(f"{getattr(check, '__name__', 'check')} accepted a wrong answer")
