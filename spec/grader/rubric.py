"""The rubric: points per group, weights per clause, Gradescope visibility per test.

Scores are kept in integer hundredths of a point ("centipoints") from the rubric to the
reports, so the same verdicts give byte-identical scores on every run and with any
number of jobs: a group's points are split over its checks by the largest-remainder
method, in the checks' sorted order, and a passed check scores its whole share.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spec.clauses import BY_ID, CLAUSES, GROUPS, OPTIONAL_GROUPS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib  # type: ignore[import-not-found,no-redef,unused-ignore]

DEFAULT_RUBRIC = Path(__file__).resolve().parent.parent / "rubric.toml"
VISIBILITIES = ("visible", "hidden", "after_due_date", "after_published")
# When a check's clauses ask for different visibilities, the most restrictive wins.
_RESTRICTIVENESS = {"visible": 0, "after_published": 1, "after_due_date": 2, "hidden": 3}


class RubricError(Exception):
    """The rubric file is missing, not TOML, or names something the spec does not have."""


@dataclass(frozen=True)
class Check:
    """One check of the suite, as collected (before any submission code ran)."""

    nodeid: str
    name: str
    clauses: tuple[str, ...]
    group: str


@dataclass(frozen=True)
class Rubric:
    name: str
    source: str  # file path, or "default"
    visibility: str
    group_points: dict[str, int]  # centipoints, every group of the spec (0 when absent)
    clause_weights: dict[str, float] = field(default_factory=dict)
    clause_visibility: dict[str, str] = field(default_factory=dict)
    group_visibility: dict[str, str] = field(default_factory=dict)
    check_visibility: dict[str, str] = field(default_factory=dict)
    check_weights: dict[str, float] = field(default_factory=dict)

    def check_names(self) -> set[str]:
        return set(self.check_visibility) | set(self.check_weights)

    def validate_checks(self, checks: list[Check]) -> None:
        """Names under [checks] must be checks of this suite (known only after collection)."""
        known = {c.name for c in checks}
        unknown = sorted(self.check_names() - known)
        if unknown:
            raise RubricError(f"rubric {self.source}: unknown check {unknown[0]!r} under [checks]")

    def weight(self, check: Check) -> float:
        if check.name in self.check_weights:
            return self.check_weights[check.name]
        return sum(self.clause_weights.get(c, 1.0) for c in check.clauses)

    def visibility_of(self, check: Check) -> str:
        if check.name in self.check_visibility:
            return self.check_visibility[check.name]
        cited = [self.clause_visibility[c] for c in check.clauses if c in self.clause_visibility]
        if cited:
            return max(cited, key=lambda v: _RESTRICTIVENESS[v])
        return self.group_visibility.get(check.group, self.visibility)


def _centipoints(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or value != value:
        raise RubricError(f"{where} must be a number >= 0, not {value!r}")
    return int(round(value * 100))


def _visibility(value: object, where: str) -> str:
    if value not in VISIBILITIES:
        raise RubricError(f"{where} must be one of {', '.join(VISIBILITIES)}, not {value!r}")
    return str(value)


def _weight(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise RubricError(f"{where} must be a number > 0, not {value!r}")
    return float(value)


def _table(data: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise RubricError(f"{where}: [{key}] must be a table")
    return value


def _known_keys(table: dict[str, Any], allowed: tuple[str, ...], where: str) -> None:
    for key in table:
        if key not in allowed:
            raise RubricError(f"{where}: unknown key {key!r} (allowed: {', '.join(allowed)})")


def parse(data: dict[str, Any], source: str) -> Rubric:
    where = f"rubric {source}"
    _known_keys(data, ("rubric", "groups", "clauses", "group_visibility", "checks"), where)
    head = _table(data, "rubric", where)
    _known_keys(head, ("name", "visibility"), f"{where} [rubric]")
    name = str(head.get("name", source))
    visibility = _visibility(head.get("visibility", "visible"), f"{where}: [rubric] visibility")

    groups = _table(data, "groups", where)
    if not groups:
        raise RubricError(f"{where}: no [groups] table: give the points of each group")
    points: dict[str, int] = {g: 0 for g in GROUPS}
    for group, value in groups.items():
        if group not in GROUPS:
            raise RubricError(f"{where}: unknown group {group!r} (the spec's groups: {', '.join(GROUPS)})")
        points[group] = _centipoints(value, f"{where}: points of group {group!r}")
    if sum(points.values()) == 0:
        raise RubricError(f"{where}: every group has 0 points")

    weights: dict[str, float] = {}
    clause_vis: dict[str, str] = {}
    for clause, entry in _table(data, "clauses", where).items():
        if clause not in BY_ID:
            raise RubricError(f"{where}: unknown clause {clause!r} under [clauses]")
        if not isinstance(entry, dict):
            raise RubricError(f"{where}: [clauses.{clause!r}] must be a table (weight, visibility)")
        _known_keys(entry, ("weight", "visibility"), f"{where} [clauses.{clause!r}]")
        if "weight" in entry:
            weights[clause] = _weight(entry["weight"], f"{where}: weight of {clause}")
        if "visibility" in entry:
            clause_vis[clause] = _visibility(entry["visibility"], f"{where}: visibility of {clause}")

    group_vis: dict[str, str] = {}
    for group, value in _table(data, "group_visibility", where).items():
        if group not in GROUPS:
            raise RubricError(f"{where}: unknown group {group!r} under [group_visibility]")
        group_vis[group] = _visibility(value, f"{where}: visibility of group {group!r}")

    check_vis: dict[str, str] = {}
    check_weights: dict[str, float] = {}
    for check, entry in _table(data, "checks", where).items():
        if not isinstance(entry, dict):
            raise RubricError(f"{where}: [checks.{check!r}] must be a table (weight, visibility)")
        _known_keys(entry, ("weight", "visibility"), f"{where} [checks.{check!r}]")
        if "weight" in entry:
            check_weights[check] = _weight(entry["weight"], f"{where}: weight of check {check!r}")
        if "visibility" in entry:
            check_vis[check] = _visibility(entry["visibility"], f"{where}: visibility of check {check!r}")

    return Rubric(name, source, visibility, points, weights, clause_vis, group_vis, check_vis, check_weights)


def load(path: str | Path | None = None) -> Rubric:
    """The rubric in `path`, or the default one shipped with the package."""
    if path is None:
        text = DEFAULT_RUBRIC.read_text(encoding="utf-8")
        source = "default"
    else:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise RubricError(f"cannot read rubric {str(path)!r}: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise RubricError(f"rubric {str(path)!r} is not UTF-8 text") from None
        source = str(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RubricError(f"rubric {source} is not valid TOML: {exc}") from None
    return parse(data, source)


# -- scoring -------------------------------------------------------------------------------


def split(total: int, weights: list[float]) -> list[int]:
    """Split `total` centipoints in proportion to `weights` (largest remainder; ties go to
    the earlier entry), so the shares are integers summing exactly to `total`."""
    if not weights:
        return []
    whole = sum(weights)
    exact = [total * w / whole for w in weights]
    shares = [int(x) for x in exact]
    left = total - sum(shares)
    order = sorted(range(len(weights)), key=lambda i: (-(exact[i] - shares[i]), i))
    for i in order[:left]:
        shares[i] += 1
    return shares


def group_points(rubric: Rubric, checks: list[Check]) -> dict[str, int]:
    """Centipoints of each group for this run. An optional group (spec.clauses.OPTIONAL_GROUPS)
    without checks here (the submission does not offer what it checks, so its checks were
    not applicable) gives its points to the other groups that have checks, in proportion to
    their points, so its absence costs nothing and the maximum stays the rubric's."""
    points = dict(rubric.group_points)
    present = {c.group for c in checks}
    absent = [g for g in OPTIONAL_GROUPS if points[g] > 0 and g not in present]
    receivers = [g for g in GROUPS if g in present and points[g] > 0]
    if absent and receivers:
        spare = sum(points.pop(g) for g in absent)
        for g, extra in zip(receivers, split(spare, [float(points[g]) for g in receivers])):
            points[g] += extra
        for g in absent:
            points[g] = 0
    return points


def max_scores(rubric: Rubric, checks: list[Check]) -> dict[str, int]:
    """Centipoints each check is worth (nodeid -> centipoints). A group without checks in
    this suite awards nothing (its points are reported as not scored), except an optional
    group, whose points go to the others (group_points)."""
    points = group_points(rubric, checks)
    out: dict[str, int] = {}
    for group in GROUPS:
        members = sorted((c for c in checks if c.group == group), key=lambda c: c.nodeid)
        for check, share in zip(members, split(points[group], [rubric.weight(c) for c in members])):
            out[check.nodeid] = share
    return out


def unscored_groups(rubric: Rubric, checks: list[Check]) -> list[str]:
    """Groups with points in the rubric but no check in the suite (optional groups whose
    points were spread over the others are not among them)."""
    present = {c.group for c in checks}
    spread = OPTIONAL_GROUPS if any(rubric.group_points[g] > 0 for g in present) else ()
    return [g for g in GROUPS if rubric.group_points[g] > 0 and g not in present and g not in spread]


def fmt(centipoints: int) -> str:
    """12.5 -> '12.5', 100 -> '100', 33.33 -> '33.33' (deterministic, no float noise)."""
    sign = "-" if centipoints < 0 else ""
    whole, cents = divmod(abs(centipoints), 100)
    if cents == 0:
        return f"{sign}{whole}"
    return f"{sign}{whole}.{cents:02d}".rstrip("0")


def to_points(centipoints: int) -> float:
    return round(centipoints / 100, 2)


def clause_order() -> dict[str, int]:
    return {c.id: i for i, c in enumerate(CLAUSES)}
