"""Print pytest-benchmark results as one markdown table per workload-operation group.

Run the benchmarks and then this script from the repository root::

    pytest benches --benchmark-only --benchmark-json=bench.json
    python benches/report.py bench.json

Each row gives an implementation's median time per call, the interquartile range
of its rounds as a gauge of noise, and two speed-ups: "TF / this" is TensorFlow's
median divided by this implementation's (above 1: faster than TensorFlow), and
"torch / this" the same against PyTorch.  The machine the results came from is
printed first.
"""

import argparse
import json
import sys

# Row order within a table; implementations not listed here follow by name.
ORDER = ("numba", "cython", "numpy", "tensorflow", "torch")

# The implementations the speed-up columns compare against.
BASELINES = (("TF / this", "tensorflow"), ("torch / this", "torch"))


def implementation_of(bench):
    """The implementation a benchmark timed, from its extra_info or its params."""
    name = bench.get("extra_info", {}).get("implementation")
    if name is not None:
        return name
    params = bench.get("params") or {}
    for key in ("implementation", "backend", "name"):
        if key in params:
            return str(params[key])
    return bench["name"]


def machine_lines(data):
    """Markdown lines describing the machine and the run."""
    machine = data.get("machine_info", {})
    cpu = machine.get("cpu", {})
    model = cpu.get("brand_raw") or machine.get("processor") or "unknown CPU"
    cores = cpu.get("count", "?")
    lines = [
        f"- CPU: {model}, {cores} logical cores",
        f"- Python {machine.get('python_version', '?')} on "
        f"{machine.get('system', '?')} {machine.get('release', '')}".rstrip(),
    ]
    commit = data.get("commit_info", {})
    if commit.get("id"):
        dirty = " (uncommitted changes)" if commit.get("dirty") else ""
        lines.append(f"- commit {commit['id'][:12]}{dirty}")
    if data.get("datetime"):
        lines.append(f"- run at {data['datetime']}")
    return lines


def group_rows(benches):
    """Rows (implementation, version, median ms, IQR ms) of one group, in ORDER."""
    rows = [
        (
            implementation_of(bench),
            bench.get("extra_info", {}).get("version", ""),
            bench["stats"]["median"] * 1e3,
            bench["stats"]["iqr"] * 1e3,
        )
        for bench in benches
    ]

    def rank(row):
        name = row[0]
        return (ORDER.index(name) if name in ORDER else len(ORDER), name)

    return sorted(rows, key=rank)


def ratio(baseline, median):
    if baseline is None:
        return "n/a"
    return f"{baseline / median:.2f}"


def group_table(benches):
    """Markdown lines of the table of one group."""
    rows = group_rows(benches)
    medians = {name: median for name, _, median, _ in rows}
    header = ["implementation", "version", "median (ms)", "IQR (ms)"]
    header += [title for title, _ in BASELINES]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] * 2 + ["---:"] * (len(header) - 2)) + "|",
    ]
    for name, version, median, iqr in rows:
        cells = [name, version, f"{median:.3f}", f"{iqr:.3f}"]
        cells += [ratio(medians.get(base), median) for _, base in BASELINES]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def report(data):
    """The whole report as markdown text."""
    groups = {}
    for bench in data.get("benchmarks", []):
        groups.setdefault(bench.get("group") or "ungrouped", []).append(bench)
    lines = ["## Machine", "", *machine_lines(data)]
    for group in sorted(groups):
        lines += ["", f"## {group}", "", *group_table(groups[group])]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json_file", help="file written by --benchmark-json")
    args = parser.parse_args(argv)
    with open(args.json_file, encoding="utf-8") as handle:
        try:
            data = json.load(handle)
        except json.JSONDecodeError as error:
            sys.exit(f"{args.json_file}: not a pytest-benchmark JSON file ({error})")
    if not data.get("benchmarks"):
        sys.exit(f"{args.json_file}: no benchmarks recorded")
    sys.stdout.write(report(data))


if __name__ == "__main__":
    main()
