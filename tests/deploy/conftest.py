"""Prints the container fault tests' figures as one table at the end of the run."""


def pytest_terminal_summary(terminalreporter):
    try:
        from test_compose_faults import RESULTS
    except ImportError:
        return
    if not RESULTS:
        return
    columns = ["scenario", "requests", "failed", "p50_s", "longest_s"]
    extra = []
    for row in RESULTS:
        extra += [k for k in row if k not in columns + ["failures"] + extra]
    lines = [" | ".join(columns + ["other figures"]), " | ".join("---" for _ in range(len(columns) + 1))]
    for row in RESULTS:
        rest = ", ".join(f"{k} {row[k]}" for k in extra if k in row)
        if row.get("failures"):
            rest += f"; failures: {row['failures']}"
        lines.append(" | ".join(str(row.get(c, "")) for c in columns) + " | " + rest)
    terminalreporter.write_sep("=", "container fault tests")
    for line in lines:
        terminalreporter.write_line(line)
