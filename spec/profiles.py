"""Hypothesis settings for grading: reproducible, no example database, no deadlines.

They apply to kvspec's own checks only. The plugin activates a profile at configure
time and attaches it, with the seed, to each collected check of spec/checks (and the
state machines read it when they run): nothing is loaded globally, so another project's
`@given` tests in the same pytest run, or in the same environment, keep their own
settings, database and randomness. Every field that matters is set explicitly, on top of
Hypothesis' built-in default profile, so neither a loaded user profile nor Hypothesis'
own `ci` profile (switched on by CI=...) changes a verdict.
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

from hypothesis import HealthCheck, Phase, settings

PROFILES = ("quick", "default", "thorough")
# Examples per @given check and steps per state-machine run, per profile.
EXAMPLES = {"quick": 12, "default": 60, "thorough": 400}
STEPS = {"quick": 12, "default": 30, "thorough": 60}
DEFAULT_PROFILE = "default"
DEFAULT_SEED = 0

T = TypeVar("T", bound=Callable[..., Any])
_active: dict[str, Any] = {"profile": DEFAULT_PROFILE, "seed": DEFAULT_SEED}


def grading_settings(profile: str) -> settings:
    """The settings of one grading profile (not registered or loaded anywhere)."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    return settings(
        settings.get_profile("default"),  # Hypothesis' built-in defaults, whatever profile is loaded
        max_examples=EXAMPLES[profile],
        stateful_step_count=STEPS[profile],
        deadline=None,  # slow code has its own explicit budget; time never decides a verdict here
        database=None,  # nothing carried between runs or submissions
        derandomize=False,  # the seed is fixed per check instead, so --kvspec-seed can change it
        suppress_health_check=list(HealthCheck),  # too_slow etc. are timing-dependent: not reproducible
        phases=(Phase.explicit, Phase.generate, Phase.shrink),
        print_blob=False,
        report_multiple_bugs=False,  # one failure per check: the minimal one
    )


def activate(profile: str, seed: int) -> None:
    """Choose the profile and seed kvspec's checks run with (same seed: same examples)."""
    _active["settings"] = grading_settings(profile)
    _active["profile"], _active["seed"] = profile, seed


def current() -> settings:
    if "settings" not in _active:
        activate(DEFAULT_PROFILE, DEFAULT_SEED)
    value: settings = _active["settings"]
    return value


def current_seed() -> int:
    return int(_active["seed"])


def apply(test: T) -> T:
    """Give one @given check (or a state machine class) the active settings and seed:
    what `@settings(...)` and `@seed(...)` would do, after the fact. A check decorated
    outside @given (functools.wraps, e.g. spec.checks._evidence.measuring) passes them on
    to the @given function it wraps."""
    if getattr(test, "is_hypothesis_test", False):
        setattr(test, "_hypothesis_internal_use_settings", current())
    setattr(test, "_hypothesis_internal_use_seed", current_seed())
    inner = getattr(test, "__wrapped__", None)
    if inner is not None and getattr(test, "is_hypothesis_test", False) and getattr(inner, "is_hypothesis_test", False):
        apply(inner)
    return test
