"""Hypothesis settings for grading: reproducible, no example database, no deadlines.

Loaded explicitly by the plugin at configure time, before any check module is imported:
a state machine's settings are fixed when its TestCase is first referenced, and
Hypothesis' own `ci` profile would otherwise switch itself on when CI is set.
"""

from __future__ import annotations

from hypothesis import HealthCheck, Phase, settings

PROFILES = ("quick", "default", "thorough")
# Examples per @given check and steps per state-machine run, per profile.
EXAMPLES = {"quick": 12, "default": 60, "thorough": 400}
STEPS = {"quick": 12, "default": 30, "thorough": 60}
DEFAULT_PROFILE = "default"
DEFAULT_SEED = 0


def profile_name(profile: str) -> str:
    return f"kvspec-{profile}"


def register_profiles() -> None:
    for profile in PROFILES:
        settings.register_profile(
            profile_name(profile),
            max_examples=EXAMPLES[profile],
            stateful_step_count=STEPS[profile],
            deadline=None,  # slow code has its own explicit budget; time never decides a verdict here
            database=None,  # nothing carried between runs or submissions
            derandomize=False,  # the plugin fixes the seed instead, so --kvspec-seed can change it
            suppress_health_check=list(HealthCheck),  # too_slow etc. are timing-dependent: not reproducible
            phases=(Phase.explicit, Phase.generate, Phase.shrink),
            print_blob=False,
            report_multiple_bugs=False,  # one failure per check: the minimal one
        )


def load(profile: str, seed: int) -> None:
    """Activate a grading profile with a fixed seed (same seed: same examples, every run)."""
    from hypothesis import core

    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    register_profiles()
    settings.load_profile(profile_name(profile))
    # What Hypothesis' own --hypothesis-seed does: every test draws from Random(seed).
    setattr(core, "global_force_seed", seed)
