"""The report's tables: the attacks with their settings, accuracy by model, attack and ε, the summary,
and the sanity checks with their verdicts."""

from __future__ import annotations

from advlab.report.certified import certified_models
from advlab.report.figures import model_label
from advlab.report.markup import at, escape, number
from advlab.results import headline_worst_case, pareto_frontier, percent, tradeoff_points, train_index


def _step_ratio(spec: dict, per_eps: list[dict]) -> str:
    """α/ε as configured, or as it comes out of the saved (ε, α) pairs."""
    if spec.get("step_ratio") is not None:
        return number(spec["step_ratio"])
    ratios = [h["alpha"] / h["eps"] for h in per_eps if h.get("alpha") is not None and h.get("eps")]
    return number(ratios[0]) if ratios else "—"


def attack_table(metrics: dict) -> str:
    rows = []
    specs = metrics.get("attacks") or {}
    train_eps = metrics["eps_grid"][train_index(metrics)]
    # The study's attacks, one row per ε, then the sanity checks' (and gallery's) attacks at their one ε.
    entries = [
        (label, per_eps, specs.get(label) or {})
        for label, per_eps in (metrics.get("attack_hyperparameters") or {}).items()
    ]
    entries += [(label, [h], {}) for label, h in (metrics.get("check_attacks") or {}).items() if isinstance(h, dict)]
    yes = {True: "yes", False: "no"}
    for label, per_eps, spec in entries:
        for k, h in enumerate(per_eps):
            head = ""
            if k == 0:
                span = f' rowspan="{len(per_eps)}"'
                cells = [
                    (h.get("attack"), "l"),
                    (h.get("norm"), "l"),
                    (number(h.get("steps")), ""),
                    (number(h.get("restarts")), ""),
                    (yes[bool(h.get("random_start"))], "l"),
                    (h.get("loss"), "l"),
                    (yes[bool(h.get("targeted"))], "l"),
                ]
                head = f'<td class="l"{span}>{escape(label)}</td>' + "".join(
                    f"<td{' class=l' if c else ''}{span}>{escape(v)}</td>" for v, c in cells
                )
                head += f"<td{span}>{_step_ratio(spec, per_eps)}</td>"
            mark = ' class="train"' if h.get("eps") == train_eps else ""
            rows.append(
                f"<tr>{head}<td{mark}>{number(h.get('eps'), 'g')}</td><td{mark}>{number(h.get('alpha'))}</td></tr>"
            )
    if not rows:
        return '<p class="note">This run does not record its attacks\' hyperparameters.</p>'
    return (
        '<table><tr><th class="l">attack</th><th class="l">kind</th><th class="l">norm</th><th>steps</th>'
        '<th>restarts</th><th class="l">random start</th><th class="l">loss</th><th class="l">targeted</th>'
        "<th>α / ε</th><th>ε</th><th>α (step size)</th></tr>" + "".join(rows) + "</table>"
    )


def results_table(metrics: dict) -> str:
    grid, i = metrics["eps_grid"], train_index(metrics)
    head = "".join(f"<th{' class=train' if j == i else ''}>ε = {e:g}</th>" for j, e in enumerate(grid))
    rows = []
    for name, model in metrics["models"].items():
        series = [*(model.get("robust_accuracy") or {}).items(), ("worst case", model.get("worst_case_accuracy") or [])]
        for k, (what, values) in enumerate(series):
            lead = (
                (
                    f'<td class="l" rowspan="{len(series)}">{escape(model_label(metrics, name))}<br>'
                    '<span class="small">'
                    f'{escape(model.get("method", ""))}</span></td><td rowspan="{len(series)}">'
                    f"{percent(model.get('clean_accuracy'))}</td>"
                )
                if k == 0
                else ""
            )
            cells = "".join(
                f"<td{' class=train' if j == i else ''}>{percent(at(values, j))}</td>" for j in range(len(grid))
            )
            what = f"<b>{escape(what)}</b>" if what == "worst case" else escape(what)
            rows.append(f'<tr>{lead}<td class="l">{what}</td>{cells}</tr>')
    return (
        f'<table><tr><th class="l">model</th><th>clean</th><th class="l">attack</th>{head}</tr>'
        + "".join(rows)
        + "</table>"
    )


def summary_table(metrics: dict) -> str:
    i, chosen = train_index(metrics), tradeoff_points(metrics)
    frontier = set(pareto_frontier(chosen))
    rows = []
    certified = certified_models(metrics)
    for name, model in metrics["models"].items():
        seconds = model.get("train_seconds")
        worst = headline_worst_case(metrics, name)
        verified = f"<td>{percent((certified.get(name) or {}).get('verified_accuracy'))}</td>" if certified else ""
        rows.append(
            f'<tr><td class="l">{escape(model_label(metrics, name))}</td>'
            f'<td class="l">{escape(model.get("method", "—"))}</td>'
            f"<td>{percent(model.get('clean_accuracy'))}</td><td>{percent(worst)}</td>{verified}"
            f'<td class="l">{"yes" if name in frontier else "no"}</td><td>{len(model.get("epochs") or [])}</td>'
            f"<td>{'—' if not isinstance(seconds, (int, float)) else f'{seconds:.0f} s'}</td></tr>"
        )
    return (
        '<table><tr><th class="l">model</th><th class="l">method</th><th>clean</th>'
        f"<th>worst case at ε = {metrics['eps_grid'][i]:g}, all attacks</th>"
        + (f"<th>verified (IBP) at ε = {metrics['eps_grid'][i]:g}</th>" if certified else "")
        + '<th class="l">on the frontier</th><th>epochs</th>'
        "<th>training time</th></tr>" + "".join(rows) + "</table>"
    )


_BADGES = {
    "pass": '<span class="badge pass">PASS</span>',
    "fail": '<span class="badge fail">FAIL</span>',
    "not applicable": '<span class="badge na">N/A</span>',
}


def check_status(check: dict) -> str:
    """``pass``, ``fail`` or ``not applicable``; runs saved before statuses existed have only ``passed``."""
    return check.get("status") or ("pass" if check.get("passed") else "fail")


def checks_table(metrics: dict) -> str:
    checks = metrics.get("sanity_checks") or []
    if not checks:
        return '<p class="note">This run holds no sanity-check results.</p>'
    rows = []
    for c in checks:
        badge = _BADGES[check_status(c)]
        numbers = ", ".join(
            f"{escape(k)}: {percent(v) if isinstance(v, (int, float)) else escape(v)}"
            for k, v in (c.get("numbers") or {}).items()
        )
        rows.append(
            f'<tr><td class="l">{escape(model_label(metrics, c.get("model", "?")))}</td>'
            f'<td class="l">{escape(c.get("check"))}</td><td class="l">{badge}</td>'
            f'<td class="l">{escape(c.get("detail", ""))}<br><span class="small">{numbers}</span></td></tr>'
        )
    statuses = [check_status(c) for c in checks]
    idle = statuses.count("not applicable")
    return (
        f"<p>{statuses.count('pass')} of {len(checks) - idle} applicable checks pass"
        + (f"; {idle} not applicable (nothing left to test)" if idle else "")
        + ".</p>"
        "<table><tr><th class='l'>model</th><th class='l'>check</th>"
        "<th class='l'>result</th><th class='l'>detail and numbers</th></tr>" + "".join(rows) + "</table>"
    )


# ------------------------------------------------------------------------------------------- reading the run


__all__ = ["attack_table", "check_status", "checks_table", "results_table", "summary_table"]
