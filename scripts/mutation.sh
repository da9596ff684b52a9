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
for line in pathlib.Path("mutants/results.txt").read_text().splitlines():
    match = re.match(r"\s*(\S+): (.+)$", line)
    if match:
        counts[match.group(2).strip()] += 1
total = sum(counts.values())
killed = counts.get("killed", 0)
print(", ".join(f"{status}: {n}" for status, n in counts.most_common()))
print(f"mutation score (app/scoring): {killed} of {total} killed = {100 * killed / max(total, 1):.1f}%")
PY
