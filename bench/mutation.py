"""Mutation testing of the core modules with mutmut: how many planted single-token bugs the fast tests
catch, per module. Not part of CI (it runs the tests once per mutant).

mutmut (3.x, `pip install mutmut==3.8.1` beside the test extras; it needs nothing else) copies the tree
into mutants/, plants every mutant it can (operators, comparisons, numbers, constants, arguments) behind
a switch, records which tests reach which function, and runs, per mutant, the tests that reach it. A
mutant is killed when one of them fails, survives when all pass, and has no tests when none reaches it.
Error-message text is not mutated (`raise …Error(...)` statements, see DO_NOT_MUTATE): the conditions
that raise are, and the tests check each message's file, row and field, not every word.
Figures are not mutated either (`# pragma: no mutate block` on a plotting function): the tests check
that a figure is written, not how it looks.

Mutants judged equivalent (no input can tell them from the original) are listed with their reason in
bench/mutation_equivalent.txt and left out of the score: killed / (mutants − equivalent).

    python bench/mutation.py                  # all core modules (about 3 h on 2 cores; bayes/* alone 78 min)
    python bench/mutation.py --modules rewardstack/losses.py rewardstack/metrics.py
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORE = {  # module → the fast test files that exercise it
    "rewardstack/losses.py": ["tests/test_math.py", "tests/test_haf.py"],
    "rewardstack/metrics.py": ["tests/test_math.py"],
    "rewardstack/bon.py": ["tests/test_bon.py", "tests/test_api.py", "tests/test_bad_input.py", "tests/test_bandit.py"],
    "rewardstack/sources/combine.py": ["tests/test_sources.py"],
    "rewardstack/laser/bandits.py": ["tests/test_bandit.py"],
    "rewardstack/bayes/*": ["tests/test_laplace.py", "tests/test_math.py", "tests/test_api.py", "tests/test_bad_input.py"],
    "rewardstack/data/encode.py": ["tests/test_data.py"],
    "rewardstack/data/load.py": ["tests/test_data.py", "tests/test_api.py"],
    "rewardstack/server/batching.py": ["tests/test_server.py"],
}
DO_NOT_MUTATE = [r"raise (User|Row|Value)Error\(", r"raise HTTPException\(", r"require\(self, "]
EQUIVALENT = Path(__file__).with_name("mutation_equivalent.txt")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modules", nargs="+", default=list(CORE), help="core modules (keys of CORE) to mutate")
    parser.add_argument("--keep", type=Path, help="run in this folder and keep it (mutmut resumes an interrupted run there)")
    parser.add_argument("--max-children", type=int, default=2, help="mutants tested at once")
    args = parser.parse_args()
    unknown = [m for m in args.modules if m not in CORE]
    if unknown:
        sys.exit(f"not a core module: {', '.join(unknown)} (known: {', '.join(CORE)})")
    work = args.keep or Path(tempfile.mkdtemp(prefix="rewardstack-mutation-"))
    if not (work / "pyproject.toml").exists():
        copy_tree(work)
        write_config(work, args.modules)
    started = time.perf_counter()
    # One OpenMP thread: mutmut forks its children from a process that has run torch, and a forked child
    # that enters an OpenMP parallel region of its parent's thread pool deadlocks (GNU libgomp).
    single_threaded = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children", str(args.max_children)], cwd=work, check=False, env=single_threaded)
    results = subprocess.run([sys.executable, "-m", "mutmut", "results", "--all", "true"], cwd=work, capture_output=True, text=True).stdout
    report(*parse_results(results), equivalent_mutants(), time.perf_counter() - started)
    if args.keep is None:
        shutil.rmtree(work)


def copy_tree(work: Path) -> None:
    """The committed and modified files of the repository (not its virtual environment or runs)."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if (ROOT / name).is_file():
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, work / name)


def write_config(work: Path, modules: list[str]) -> None:
    tests = sorted({t for m in modules for t in CORE[m]})
    with open(work / "pyproject.toml", "a") as handle:
        handle.write(f"""
[tool.mutmut]
source_paths = ["rewardstack/"]
also_copy = ["configs/"]
only_mutate = {json.dumps(modules)}
do_not_mutate_patterns = {json.dumps(DO_NOT_MUTATE)}
pytest_add_cli_args = ["-m", "not integration", "-p", "no:cacheprovider"]
pytest_add_cli_args_test_selection = {json.dumps(tests)}
process_isolation = "forkserver"
""")


def parse_results(text: str) -> tuple[dict[str, Counter], list[str]]:
    """mutmut's `module.x_function__mutmut_N: status` lines → ({module: Counter(status)}, survivor names)."""
    by_module: dict[str, Counter] = defaultdict(Counter)
    survivors = []
    for line in text.splitlines():
        match = re.match(r"\s*((rewardstack\.[\w.]+?)\.x\S*__mutmut_\d+): (.+)", line)
        if match:
            name, module, status = match.group(1), match.group(2), match.group(3).strip()
            by_module[module][status] += 1
            if status == "survived":
                survivors.append(name)
    return by_module, survivors


def equivalent_mutants() -> set[str]:
    """Mutant names listed in mutation_equivalent.txt (`name  # reason`)."""
    if not EQUIVALENT.exists():
        return set()
    return {line.split("#")[0].strip() for line in EQUIVALENT.read_text().splitlines() if line.split("#")[0].strip()}


def report(by_module: dict[str, Counter], survivors: list[str], equivalent: set[str], seconds: float) -> None:
    print(f"\n{'module':<34}{'mutants':>8}{'killed':>8}{'survived':>9}{'no tests':>9}{'timeout':>8}{'equiv.':>7}{'score':>8}")
    for module, counts in sorted(by_module.items()):
        total = sum(counts.values())
        equiv = sum(1 for name in survivors if name.startswith(module + ".") and name in equivalent)
        caught = counts["killed"] + counts["timeout"]
        score = caught / (total - equiv) if total > equiv else float("nan")
        print(f"{module:<34}{total:>8}{counts['killed']:>8}{counts['survived']:>9}{counts['no tests']:>9}{counts['timeout']:>8}{equiv:>7}{score:>8.1%}")
    print(f"\n{seconds / 60:.0f} min; survivors not marked equivalent:")
    for name in survivors:
        if name not in equivalent:
            print(f"  {name}")


if __name__ == "__main__":
    main()
