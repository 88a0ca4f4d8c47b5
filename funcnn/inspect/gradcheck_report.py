"""What `funcnn.gradcheck` returns: one `LeafCheck` per leaf in a `GradcheckReport`.

A leaf is "ok" only when something was compared and nothing failed. It is
"unchecked" when nothing was: autodiff skipped (or the same code path as the custom
rule) and no finite-difference coordinate or direction left to compare, so a report
never calls an empty check a pass.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np


class LeafCheck(NamedTuple):
    """The result for one differentiated leaf; `None` means not compared.

    Each error is the largest absolute difference and that difference relative to
    the largest gradient magnitude among the values compared.

    Attributes:
        name: the leaf, e.g. `params['00_conv']['w']` or `x`.
        shape: its shape.
        ad_abs: custom vs autodiff, over every coordinate: the absolute error.
        ad_rel: the same, relative.
        ad_ok: whether it passed the autodiff tolerance.
        fd_abs: custom vs float64 finite differences, over the smooth
            coordinates and directions: the absolute error.
        fd_rel: the same, relative.
        fd_ok: whether it passed the FD tolerance.
        fd_coords: coordinates differenced: all of a small leaf, else a sample.
        fd_directions: random directional derivatives taken.
        nonsmooth: coordinates skipped as non-smooth (a max's tie within the FD
            step), as index tuples.
        nonsmooth_directions: directions skipped as non-smooth.
    """

    name: str  # e.g. "params['00_conv']['w']", "x"
    shape: tuple[int, ...]
    ad_abs: float | None  # custom vs autodiff, over every coordinate
    ad_rel: float | None
    ad_ok: bool | None
    fd_abs: float | None  # custom vs FD, over smooth coordinates and directions
    fd_rel: float | None
    fd_ok: bool | None
    fd_coords: int  # coordinates differenced: all of a small leaf, else a sample
    fd_directions: int  # random directional derivatives
    nonsmooth: tuple[tuple[int, ...], ...]  # skipped coordinates, as index tuples
    nonsmooth_directions: int  # skipped directions

    @property
    def checked(self) -> bool:
        """Whether anything was compared: autodiff, or at least one FD probe."""
        return self.ad_ok is not None or self.fd_ok is not None

    @property
    def ok(self) -> bool:
        """Something was compared, and nothing compared failed."""
        return self.checked and self.ad_ok is not False and self.fd_ok is not False

    @property
    def result(self) -> str:
        """ "ok", "FAIL (autodiff, FD)" (what failed), or "unchecked"."""
        bad = [
            n for n, v in (("autodiff", self.ad_ok), ("FD", self.fd_ok)) if v is False
        ]
        if bad:
            return f"FAIL ({', '.join(bad)})"
        return "ok" if self.checked else "unchecked"


@dataclasses.dataclass(frozen=True)
class GradcheckReport:
    """What `gradcheck` found: `report.ok`, and `print(report)` for a table.

    `autodiff` says whether the autodiff comparison was asked for; `same_path`
    that it was asked for but not made, because the custom and autodiff gradients
    trace to the same jaxpr (a layer without a custom rule): comparing a function
    with itself would only ever print a zero.

    Attributes:
        title: the report's heading.
        objective: what was differentiated, e.g. "vdot(output, random g)".
        rows: one `LeafCheck` per differentiated leaf.
        eps: the finite-difference step h.
        ad_tol: `(atol, rtol)` of the autodiff comparison.
        fd_tol: `(atol, rtol)` of the finite-difference comparison.
        autodiff: whether the autodiff comparison was asked for.
        same_path: whether it was skipped because both modes trace alike.
    """

    title: str
    objective: str
    rows: tuple[LeafCheck, ...]
    eps: float
    ad_tol: tuple[float, float]  # (atol, rtol)
    fd_tol: tuple[float, float]
    autodiff: bool
    same_path: bool = False

    @property
    def status(self) -> str:
        """ "FAILED" if a leaf failed, else "unchecked" if a leaf had nothing
        compared, else "ok"."""
        if any(r.result.startswith("FAIL") for r in self.rows):
            return "FAILED"
        if not self.rows or not all(r.checked for r in self.rows):
            return "unchecked"
        return "ok"

    @property
    def ok(self) -> bool:
        """Every leaf had at least one comparison, and none failed (non-smooth
        points are skipped, not failures)."""
        return self.status == "ok"

    @property
    def num_nonsmooth(self) -> int:
        return sum(len(r.nonsmooth) + r.nonsmooth_directions for r in self.rows)

    def __str__(self) -> str:
        def num(v):
            if v is None and self.same_path:
                return "same path"
            return "-" if v is None else f"{v:.1e}"

        table = [
            ["leaf", "shape", "ad abs", "ad rel", "FD abs", "FD rel", "FD coords"]
            + ["dirs", "non-smooth", "result"]
        ]
        for r in self.rows:
            size = int(np.prod(r.shape, dtype=np.int64))
            skipped = len(r.nonsmooth) + r.nonsmooth_directions
            table.append(
                [r.name, str(r.shape), num(r.ad_abs), num(r.ad_rel)]
                + ["-" if r.fd_abs is None else f"{r.fd_abs:.1e}"]
                + ["-" if r.fd_rel is None else f"{r.fd_rel:.1e}"]
                + [f"{r.fd_coords}/{size}", str(r.fd_directions), str(skipped)]
                + [r.result]
            )
        widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
        lines = [
            f"gradcheck: {self.title}",
            f"  objective: {self.objective}; float64; FD step h = {self.eps:g}",
        ]
        for line in table:
            cells = [
                c.ljust(w) if i < 2 else c.rjust(w)
                for i, (c, w) in enumerate(zip(line, widths))
            ]
            lines.append("  " + "  ".join(cells).rstrip())
        for r in self.rows:
            if r.nonsmooth or r.nonsmooth_directions:
                where = [f"{r.name}{list(i)}" for i in r.nonsmooth[:4]]
                where += [f"... {len(r.nonsmooth) - 4} more"] * (len(r.nonsmooth) > 4)
                where += [f"{r.nonsmooth_directions} direction(s) in {r.name}"] * (
                    r.nonsmooth_directions > 0
                )
                lines.append(f"  non-smooth (skipped): {', '.join(where)}")
        if self.same_path:
            lines.append(
                "  autodiff: same path (both grad modes trace to the same jaxpr: no "
                "custom rule here, so that comparison would check nothing)"
            )
        ad = "autodiff: skipped" if not self.autodiff else "autodiff"
        lines.append(
            f"  pass: abs <= atol + rtol * max|gradient|; {ad} (atol "
            f"{self.ad_tol[0]:g}, rtol {self.ad_tol[1]:g}); FD (atol "
            f"{self.fd_tol[0]:g}, rtol {self.fd_tol[1]:g})"
        )
        failed = sum(r.result.startswith("FAIL") for r in self.rows)
        unchecked = sum(not r.checked for r in self.rows)
        lines.append(
            f"  result: {self.status} ({len(self.rows)} leaves, {failed} failed, "
            f"{unchecked} unchecked, {self.num_nonsmooth} non-smooth probes skipped)"
        )
        return "\n".join(lines)
