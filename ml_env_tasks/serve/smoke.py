"""Smoke tests of a scoring container: start it, wait until ready, send cases, check, remove.

Cases are JSON lines, one object each::

    {"name": "two digits", "request": {"data": [[...], [...]]}, "expect_schema": {...}}
    {"request_text": "not json", "expect_status": 500, "expect_subset": {"message": "..."}}

Keys: ``request`` (the JSON body) or ``request_text`` (a raw body); ``expect_status`` (default
200); at most one of ``expect_json`` (exact; numbers within ``tolerance`` when given),
``expect_subset`` (these keys/values must be present), ``expect_schema`` (JSON Schema); ``name``.
"""

from __future__ import annotations

import http.client
import json
import math
import statistics
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import MlEnvError, ServiceFailed, SpecError
from ..release.tested import Combination, model_digests
from ..safe.fsutil import read_text_bounded, write_atomic
from ..safe.untrusted import json_loads
from . import client
from .local import ServeOptions, Service, remove, start, wait_ready

__all__ = [
    "Case",
    "CaseResult",
    "SmokeReport",
    "ServiceFailed",
    "check",
    "load_cases",
    "run_smoke_test",
    "write_reports",
]

MAX_CASES_BYTES = 64 * 2**20  # a cases file; each request body is bounded by the server anyway
CASE_KEYS = {
    "name",
    "request",
    "request_text",
    "expect_status",
    "expect_json",
    "expect_subset",
    "expect_schema",
    "tolerance",
}
EXPECTS = ("expect_json", "expect_subset", "expect_schema")


@dataclass(frozen=True)
class Case:
    name: str
    line: int
    body: bytes
    expect_status: int = 200
    expect: str | None = None  # which expect_* key
    expected: Any = None
    tolerance: float | None = None


@dataclass
class CaseResult:
    name: str
    line: int
    passed: bool
    status: int | None
    message: str
    latencies_ms: list[float] = field(default_factory=list)
    response: Any = None


@dataclass
class SmokeReport:
    image: str
    url: str
    ready_s: float
    cases: list[CaseResult]
    p50_ms: float
    p95_ms: float
    max_ms: float
    logs_tail: str = ""
    tested: Combination | None = None  # what ran on the image (None: not named, and the result is not recorded)

    @property
    def passed(self) -> int:
        return sum(c.passed for c in self.cases)

    @property
    def failed(self) -> int:
        return len(self.cases) - self.passed

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(passed=self.passed, failed=self.failed, tested=self.tested.fields() if self.tested else None)
        return d


def load_cases(path: Path) -> list[Case]:
    if not path.exists():
        raise SpecError("cases file not found", file=str(path))
    try:
        text = read_text_bounded(path, MAX_CASES_BYTES, error=SpecError, what="cases file")
    except OSError as e:
        raise SpecError(f"cannot be read: {e.strerror}", file=str(path)) from None
    cases: list[Case] = []
    for i, raw in enumerate(text.splitlines(), 1):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        try:
            obj = json_loads(raw, error=SpecError, file=f"{path}:{i}")
        except ValueError as e:
            raise SpecError(f"not a JSON object: {e}", file=str(path), line=i) from None
        if not isinstance(obj, dict):
            raise SpecError("each line must be a JSON object", file=str(path), line=i)
        unknown = set(obj) - CASE_KEYS
        if unknown:
            raise SpecError(f"unknown keys {sorted(unknown)}; known: {sorted(CASE_KEYS)}", file=str(path), line=i)
        if ("request" in obj) == ("request_text" in obj):
            raise SpecError("give exactly one of request, request_text", file=str(path), line=i)
        expects = [k for k in EXPECTS if k in obj]
        if len(expects) > 1:
            raise SpecError(f"at most one of {', '.join(EXPECTS)}; got {', '.join(expects)}", file=str(path), line=i)
        status = obj.get("expect_status", 200)
        if not isinstance(status, int) or isinstance(status, bool):
            raise SpecError("expect_status must be an integer", file=str(path), line=i)
        tol = obj.get("tolerance")
        if tol is not None and (not isinstance(tol, (int, float)) or isinstance(tol, bool) or tol < 0):
            raise SpecError("tolerance must be a non-negative number", file=str(path), line=i)
        if "expect_schema" in obj:
            import jsonschema

            try:
                jsonschema.validators.validator_for(obj["expect_schema"]).check_schema(obj["expect_schema"])
            except jsonschema.SchemaError as e:
                raise SpecError(
                    f"expect_schema is not a valid JSON Schema: {e.message}", file=str(path), line=i
                ) from None
        if "request_text" in obj and not isinstance(obj["request_text"], str):
            raise SpecError("request_text must be a string", file=str(path), line=i)
        body = obj["request_text"].encode() if "request_text" in obj else json.dumps(obj["request"]).encode()
        expect = expects[0] if expects else None
        cases.append(
            Case(
                name=str(obj.get("name") or f"case {len(cases) + 1} (line {i})"),
                line=i,
                body=body,
                expect_status=status,
                expect=expect,
                expected=obj.get(expect) if expect else None,
                tolerance=float(tol) if tol is not None else None,
            )
        )
    if not cases:
        raise SpecError("no cases", file=str(path))
    return cases


def _close(a: Any, b: Any, tol: float | None, where: str = "$") -> str | None:
    """None when ``got`` (b) matches ``expected`` (a); else where and how it differs."""
    if isinstance(a, bool) or isinstance(b, bool):
        return None if a == b else f"{where}: expected {json.dumps(a)}, got {json.dumps(b)}"
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        ok = math.isclose(a, b, rel_tol=0, abs_tol=tol) if tol is not None else a == b
        return None if ok else f"{where}: expected {a}, got {b}" + (f" (tolerance {tol})" if tol is not None else "")
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return f"{where}: expected keys {sorted(a)}, got {sorted(b)}"
        for k in a:
            d = _close(a[k], b[k], tol, f"{where}.{k}")
            if d:
                return d
        return None
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return f"{where}: expected {len(a)} items, got {len(b)}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            d = _close(x, y, tol, f"{where}[{i}]")
            if d:
                return d
        return None
    return None if a == b else f"{where}: expected {json.dumps(a)}, got {json.dumps(b)}"


def _subset(a: Any, b: Any, tol: float | None, where: str = "$") -> str | None:
    if isinstance(a, dict):
        if not isinstance(b, dict):
            return f"{where}: expected an object, got {json.dumps(b)[:100]}"
        for k, v in a.items():
            if k not in b:
                return f"{where}: missing key {k!r}"
            d = _subset(v, b[k], tol, f"{where}.{k}")
            if d:
                return d
        return None
    return _close(a, b, tol, where)


def check(case: Case, status: int, text: str) -> str | None:
    """None if the response passes the case; else what is wrong (expected vs got)."""
    if status != case.expect_status:
        return f"expected status {case.expect_status}, got {status}: {text[:300]}"
    if case.expect is None:
        return None
    try:
        got = json.loads(text)
    except ValueError:
        return f"the response is not JSON: {text[:300]}"
    if case.expect == "expect_json":
        return _close(case.expected, got, case.tolerance)
    if case.expect == "expect_subset":
        return _subset(case.expected, got, case.tolerance)
    import jsonschema

    errors = sorted(jsonschema.validators.validator_for(case.expected)(case.expected).iter_errors(got), key=str)
    if errors:
        e = errors[0]
        path = "$" + "".join(f"[{p!r}]" if isinstance(p, str) else f"[{p}]" for p in e.absolute_path)
        return f"{path}: {e.message}"
    return None


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def run_smoke_test(
    opts: ServeOptions,
    cases_path: Path,
    *,
    repeat: int = 1,
    ready_timeout: float = 120.0,
    request_timeout: float = 60.0,
    info: Any = None,
    name_tested: bool = True,
) -> SmokeReport:
    """Build or reuse, start, wait, send, check, report; the container is removed in every path.
    ``name_tested``: the report names what ran (the entry folder's hash, each model's digest), as a
    record of it must; a model folder whose digest would leave out files it shows is refused."""
    cases = load_cases(cases_path)
    if repeat < 1:
        raise MlEnvError("--repeat must be at least 1")
    models = model_digests(opts.models, complete=True, warn=info or print) if name_tested else None
    service: Service | None = None
    from ..runs import on_stop_signals

    try:
        with on_stop_signals(_interrupt):
            service = start(ServeOptions(**{**opts.__dict__, "port": 0}), info=info, unique=True)
            if info:
                info(f"started {service.image} at {service.url}; waiting for readiness")
            ready = wait_ready(service, ready_timeout)
            results = [_run_case(service, case, repeat, request_timeout) for case in cases]
        from .services import _containers

        lat = [x for r in results for x in r.latencies_ms]
        logs_tail = ""
        if any(not r.passed for r in results):
            logs_tail = _containers().logs_text(service.container_id, tail=40)
        return SmokeReport(
            image=service.image,
            url=service.url,
            ready_s=ready,
            cases=results,
            p50_ms=_percentile(lat, 50),
            p95_ms=_percentile(lat, 95),
            max_ms=max(lat) if lat else 0.0,
            logs_tail=logs_tail,
            tested=None if models is None else Combination(*(service.entry or ("", "")), models),
        )
    finally:
        if service is not None:
            remove(service)


def _interrupt(signum: int) -> None:
    """SIGINT/SIGTERM unwind through ``finally``, so the container is removed."""
    raise KeyboardInterrupt


def _run_case(service: Service, case: Case, repeat: int, timeout: float) -> CaseResult:
    latencies: list[float] = []
    status, text, message = None, "", None
    for i in range(repeat):
        t0 = time.perf_counter()
        try:
            r = client.request("POST", service.url + "/score", body=case.body,
                               headers={"Content-Type": "application/json"}, timeout=timeout)  # fmt: skip
        except (OSError, http.client.HTTPException) as e:
            return CaseResult(case.name, case.line, False, None, f"request failed: {_why(e)}", latencies)
        latencies.append((time.perf_counter() - t0) * 1000)
        if i == 0:
            status, text = r.status, r.text
            message = check(case, r.status, r.text)
    try:
        response = json.loads(text)
    except ValueError:
        response = text[:1000]
    return CaseResult(case.name, case.line, message is None, status, message or "ok", latencies, response)


def _why(e: BaseException) -> str:
    if isinstance(e, TimeoutError):
        return "timed out"
    return f"{type(e).__name__}: {e}"[:300]


def write_reports(report: SmokeReport, directory: Path, cases_path: Path) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    js = directory / "smoke-test.json"
    write_atomic(js, json.dumps(report.to_json(), indent=2))  # a rename: never through a committed link
    suite = ET.Element(
        "testsuite",
        name=f"ml-env smoke-test {cases_path.name}",
        tests=str(len(report.cases)),
        failures=str(report.failed),
        errors="0",
        time=f"{sum(sum(c.latencies_ms) for c in report.cases) / 1000:.3f}",
    )
    for c in report.cases:
        tc = ET.SubElement(
            suite,
            "testcase",
            classname=cases_path.stem,
            name=c.name,
            time=f"{(c.latencies_ms[0] if c.latencies_ms else 0) / 1000:.3f}",
        )
        tc.set("file", str(cases_path))
        tc.set("line", str(c.line))
        if not c.passed:
            f = ET.SubElement(tc, "failure", message=c.message[:500])
            f.text = c.message
    if report.logs_tail:
        ET.SubElement(suite, "system-err").text = report.logs_tail
    xml = directory / "smoke-test.junit.xml"
    write_atomic(xml, ET.tostring(suite, encoding="utf-8", xml_declaration=True))
    return js, xml


def record_result(report: SmokeReport, cases_path: Path, *, insecure: bool = False, info: Any = None) -> Any:
    """Attach the result to the digest it tested, in the image's registry (``attest``): what
    ``promote --require smoke-test`` asks for. An image only in the local engine has nowhere to
    carry it; a registry that refuses is a warning, never a failed smoke test."""
    from ..errors import RegistryError
    from ..release.attest import record_smoke
    from ..safe.digests import file_sha256

    if report.tested is None:
        if info:
            info("warning: not recorded: the report does not name the entry and models that ran")
        return None
    try:
        att = record_smoke(
            report.image, report, file_sha256(cases_path, use_cache=False), tested=report.tested, insecure=insecure
        )
    except RegistryError as e:
        if info:
            info(f"warning: the result could not be attached to {report.image}: {e.message}")
        return None
    if att and info:
        what = report.tested.describe() if report.tested else "the image as it is"
        info(f"recorded the result against {report.image} ({att.digest[:19]}): {what}")
    return att
