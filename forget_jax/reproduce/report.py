"""report.md and report.json: every claim with predicted, measured, tolerance and PASS/FAIL."""

from __future__ import annotations

import datetime as _dt
import json
import platform
from pathlib import Path

#: How the report names the mode (the `--quick` flag).
MODE_TEXT = {
    True: "quick (`--quick`: the reduced grids of the `quick:` sections of configs/reproduce/*.yaml)",
    False: "full (the full grids of configs/reproduce/*.yaml, no `--quick`)",
}


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def build_report(results: list[dict], *, quick: bool, runtime_s: float, out: Path) -> dict:
    """results: one dict per study with keys name, title, claims (list[Claim]), figures, stores
    (list[StoreRecord]), notes, seconds."""
    import jax

    from .._version import __version__

    claims = [c for r in results for c in r["claims"]]
    passed = sum(c.passed for c in claims)
    device = jax.devices()[0]
    return {
        "passed": passed,
        "total": len(claims),
        "failed": [c.id for c in claims if not c.passed],
        "quick": quick,
        "mode": "quick" if quick else "full",
        "runtime_s": runtime_s,
        "out": str(out),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "forget_jax_version": __version__,
        "jax_version": jax.__version__,
        "device": f"{device.platform}:{device.device_kind} x{len(jax.devices())}",
        "host": platform.node(),
        "studies": {
            r["name"]: {
                "title": r["title"],
                "seconds": r["seconds"],
                "passed": sum(c.passed for c in r["claims"]),
                "total": len(r["claims"]),
                "figures": r["figures"],
                "notes": r["notes"],
                "stores": [{**vars(s), "grid_text": s.grid_text()} for s in r["stores"]],
            }
            for r in results
        },
        "claims": [c.to_json() for c in claims],
    }


def write_report(report: dict, results: list[dict], out: Path) -> None:
    out = Path(out)
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    lines = [
        "# forget-jax reproduce: report",
        "",
        f"{report['passed']}/{report['total']} claims PASS"
        + (f" (FAIL: {', '.join(report['failed'])})" if report["failed"] else "")
        + f". Mode: {MODE_TEXT[report['quick']]}; "
        f"runtime {report['runtime_s']:.0f} s on {report['device']}; forget-jax {report['forget_jax_version']}, "
        f"jax {report['jax_version']}; {report['created']}.",
        "",
        f"## Grids ({'quick' if report['quick'] else 'full'})",
        "",
        "| study | store | grid |",
        "|---|---|---|",
    ]
    for result in results:
        for s in result["stores"]:
            lines.append(f"| {result['name']} | `{Path(s.path).name}` | {_cell(s.grid_text())} |")
    lines += [
        "",
        "Predictions are those of docs/science/claims.md (theorems T1-T6) and docs/science/studies.md (section 4 views PD1-PD6, section 5 CRNC25); "
        "docs/science/claims.md marks T1-T9 as reconstructions, so a FAIL means simulation and reconstruction disagree, "
        "and its note says how.",
        "",
        "## All claims",
        "",
        "| claim | source | predicted | measured | tolerance | result |",
        "|---|---|---|---|---|---|",
    ]
    for result in results:
        for c in result["claims"]:
            lines.append(
                f"| `{c.id}` | {_cell(c.source)} | {_cell(c.predicted)} | {_cell(c.measured)} | "
                f"{_cell(c.tolerance)} | **{c.verdict}** |"
            )
    for result in results:
        study = report["studies"][result["name"]]
        lines += [
            "",
            f"## {result['name']}: {result['title']}",
            "",
            f"{study['passed']}/{study['total']} claims PASS; {result['seconds']:.1f} s.",
            "",
        ]
        for note in result["notes"]:
            lines += [note, ""]
        lines += ["Stores:", ""]
        for s in result["stores"]:
            status = "reused (complete, same configuration)" if s.reused else "computed"
            timing = (
                f"; compile {s.compile_s:.1f} s, run {s.run_s:.1f} s (summed over blocks)"
                if not s.reused and s.compile_s == s.compile_s
                else ""
            )
            lines.append(
                f"- `{Path(s.path).name}`: {s.configs} configurations, {status}, {s.seconds:.1f} s{timing}. "
                f"Grid ({'quick' if report['quick'] else 'full'}): {s.grid_text()}."
            )
        lines += ["", "Claims:", ""]
        for c in result["claims"]:
            lines.append(
                f"- **{c.verdict}** `{c.id}`: {c.statement} Predicted {c.predicted}; measured "
                f"{c.measured}; tolerance {c.tolerance}." + (f" *Note:* {c.note}" if c.note else "")
            )
        pngs = [f for f in result["figures"] if f.endswith(".png")]
        if pngs:
            lines += ["", "Figures (PNG shown; a PDF with the same name sits beside each):", ""]
            lines += [f"![{Path(f).stem}]({f})" for f in pngs]
    (out / "report.md").write_text("\n".join(lines) + "\n")
