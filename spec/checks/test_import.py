"""Group import: the submission loads and has the names the rest of the suite needs."""

from __future__ import annotations

from spec.clauses import checks
from spec.isolation.driver import Driver, SubmissionUnavailable
from spec.session import SpecFailure

REQUIRED = ("KVCache", "enable_kv_cache", "disable_kv_cache")


@checks("KV-IMP-1")
def test_module_imports_and_defines_the_api(driver: Driver) -> None:
    try:
        info = driver.describe()
    except SubmissionUnavailable as exc:
        raise SpecFailure("KV-IMP-1", f"[KV-IMP-1] the cache module could not be imported: {exc.detail}\n{exc.traceback}") from None
    missing = [n for n in REQUIRED if n not in info.names]
    if missing:
        raise SpecFailure("KV-IMP-1", f"[KV-IMP-1] {info.module} does not define {', '.join(missing)}")
