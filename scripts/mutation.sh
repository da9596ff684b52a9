#!/usr/bin/env bash
# Mutation testing of the failover brain (app/scoring/, configured in pyproject.toml's
# [tool.mutmut]): each mutant is a small change to the code; a mutant the tests do not
# notice is a survivor. Prints the score: killed / all mutants (those no test reaches
# count as survivors). Not part of .ci/run: it takes about half an hour on 2 cores.
# Equivalent survivors are listed in tests/mutation-survivors.md.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test
.venv/bin/python -m pip install -q --disable-pip-version-check "mutmut==3.8.1"
rm -rf mutants
.venv/bin/mutmut run --max-children "${MUTATION_JOBS:-2}" || true
.venv/bin/mutmut results --all true > mutants/results.txt || true
.venv/bin/python - <<'PY'
import collections, pathlib, re
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
print(f"mutation score (app/scoring): {killed} of {total} killed = {100 * killed / max(total, 1):.1f}%")
PY
