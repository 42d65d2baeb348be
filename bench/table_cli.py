"""What bench/serve_table.py and bench/target_table.py share: their command
line (a results JSON under bench/results/, --json), reading it, and printing
rows as JSON or as a markdown table headed by the file's machine and commit.
Standard library only."""
import argparse
import json
import sys


def fmt(v, spec):
    """v formatted by spec, or "-" where the run has no such figure."""
    return format(v, spec) if isinstance(v, (int, float)) else "-"


def parse(argv, doc, add_args=None):
    """(arguments, results JSON) of a table tool's command line; add_args(parser)
    adds the tool's own options."""
    p = argparse.ArgumentParser(description=doc.split("\n")[0])
    p.add_argument("results", help="a results JSON under bench/results/")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    if add_args:
        add_args(p)
    a = p.parse_args(argv)
    with open(a.results) as fh:
        return a, json.load(fh)


def emit(a, results, rows, header, line):
    """Prints rows as JSON (--json) or as a table: the header cells, then
    line(row) for each row. Returns the exit status (0)."""
    if a.json:
        json.dump(rows, sys.stdout, indent=1)
        print()
        return 0
    print(f"{a.results} ({results.get('machine')}, commit {results.get('commit')})")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for x in rows:
        print(line(x))
    return 0
