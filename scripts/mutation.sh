#!/usr/bin/env bash
# Mutation testing with mutmut: each mutant is a small change to the code; a mutant the
# tests do not notice is a survivor. Prints the score per module and in all: killed / all
# mutants (those no test reaches count as survivors). Equivalent survivors are listed in
# tests/mutation-survivors.md. Not part of .ci/run.
#
#   scripts/mutation.sh [scoring]   the failover brain, app/scoring/ (about ten minutes on 2 cores)
#   scripts/mutation.sh summary     the summary's computations and the label/series guards:
#                                   app/summary/figures.py, quantiles.py, app/topn.py, app/registry.py
#   scripts/mutation.sh TARGET 'app.topn*'   only the mutants whose names match (mutmut's patterns);
#                                   the others then show as "not checked" in the counts
#
# MUTATION_JOBS sets mutmut's --max-children (default 2).
#
# mutmut 3.8.1 reads its settings only from [tool.mutmut] in ./pyproject.toml. The scoring
# target is that table as it is; another target's settings are the sub-table of the same
# name ([tool.mutmut.summary]), which mutmut itself ignores. To use them the script runs
# mutmut's own command line in a Python that first wraps mutmut's config reader
# (mutmut.configuration._config_reader) so the target's keys win over the top-level ones.
# mutmut forks its workers, so they inherit the wrapped reader. Nothing is written to
# pyproject.toml; mutmut's scratch directory, mutants/, is wiped at the start of each run.
set -euo pipefail
cd "$(dirname "$0")/.."
target="${1:-scoring}"
shift || true
case "$target" in
    scoring|summary) ;;
    *) echo "usage: scripts/mutation.sh [scoring|summary] [mutant name patterns...]" >&2; exit 2 ;;
esac
scripts/setup.sh test
.venv/bin/python -m pip install -q --disable-pip-version-check "mutmut==3.8.1"

mutmut() {
    .venv/bin/python -c '
import sys
import tomllib
from pathlib import Path

import mutmut.configuration as configuration

target, arguments = sys.argv[1], sys.argv[2:]
table = tomllib.loads(Path("pyproject.toml").read_text("utf-8"))["tool"]["mutmut"]
overrides = {} if target == "scoring" else table[target]
read_pyproject = configuration._config_reader


def target_reader():
    read = read_pyproject()
    return lambda key, default: overrides[key] if key in overrides else read(key, default)


configuration._config_reader = target_reader
from mutmut.__main__ import cli  # noqa: E402 - after the reader is wrapped

sys.argv = ["mutmut", *arguments]
sys.exit(cli())
' "$target" "$@"
}

rm -rf mutants
mutmut run --max-children "${MUTATION_JOBS:-2}" "$@" || true
mutmut results --all true > mutants/results.txt || true
.venv/bin/python - "$target" <<'PY'
import collections, pathlib, re, sys
counts = collections.Counter()
by_module: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
for line in pathlib.Path("mutants/results.txt").read_text().splitlines():
    match = re.match(r"\s*(\S+): (.+)$", line)
    if match:
        status = match.group(2).strip()
        counts[status] += 1
        by_module[match.group(1).split(".x")[0]][status] += 1
for module, module_counts in sorted(by_module.items()):
    total = sum(module_counts.values())
    killed = module_counts.get("killed", 0)
    print(f"{module}: {killed} of {total} killed = {100 * killed / max(total, 1):.1f}%")
total = sum(counts.values())
killed = counts.get("killed", 0)
print(", ".join(f"{status}: {n}" for status, n in counts.most_common()))
print(f"mutation score ({sys.argv[1]}): {killed} of {total} killed = {100 * killed / max(total, 1):.1f}%")
PY
