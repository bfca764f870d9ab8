#!/usr/bin/env bash
# Mutation testing (mutmut) of the modules that hold the rules; results and reasons in docs/testing.md.
#
#   bash scripts/mutation.sh [module ...]     modules: curation select redpo store config filters llm adaptive
#                                             (default: all of them, one after the other)
#
# Each module runs in its own work folder, mutants/<module>/ (git-ignored), with [tool.mutmut] from
# pyproject.toml narrowed to that module's file and that module's fast unit tests, so a mutant runs only the
# tests of its own module that call the mutated function. For config and llm only the functions in scope
# (below) are mutated and counted. Afterwards, e.g.: cd mutants/config && ../../.venv/bin/mutmut show <name>
#
# Environment: MUTMUT_CHILDREN (default 2) parallel mutant runs; PYTHON (default .venv/bin/python);
# MUTATION_REPORT_ONLY=1 prints the table of the last runs without running anything.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-$ROOT/.venv/bin/python}
CHILDREN=${MUTMUT_CHILDREN:-2}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} HF_HUB_OFFLINE=1 HF_HUB_DISABLE_PROGRESS_BARS=1

if [ ! -x "$PY" ]; then
  echo "no $PY: run bash scripts/setup.sh first (or set PYTHON)" >&2
  exit 1
fi
PIN=$(sed -n 's/.*"mutmut==\([0-9.]*\)".*/\1/p' pyproject.toml | head -1)
if [ "$("$PY" -c 'import importlib.metadata as m; print(m.version("mutmut"))' 2>/dev/null)" != "$PIN" ]; then
  echo "installing the dev extra (mutmut==$PIN)"
  "$PY" -m pip install --quiet --disable-pip-version-check -e ".[dev]"
fi

# module | file | unit tests (pytest arguments) | functions in scope ("*" = every function in the file)
MODULES="curation select redpo store config filters llm adaptive"
spec() {
  case $1 in
    curation) echo "vip/curation.py|tests/unit/test_curation.py tests/unit/test_curation_rejects.py|*" ;;
    select) echo "vip/selection.py|tests/unit/test_selection.py|deltas rank choose" ;;
    redpo) echo "vip/redpo.py|tests/unit/test_redpo.py tests/unit/test_redpo_flow_noise.py tests/unit/test_redpo_training_noise.py|*" ;;
    store) echo "vip/store.py|tests/unit/test_store.py|*" ;;
    config) echo "vip/config.py|tests/unit/test_config.py|_coerce apply from_dict parse_value parse_override load reads_key validate_keys_read validate _check_sign has_control_chars validate_slurm" ;;
    filters) echo "vip/prompts/filters.py|tests/unit/prompts/test_filters_rules.py tests/unit/prompts/test_filters.py::test_words_drop_articles_and_punctuation tests/unit/prompts/test_filters.py::test_single_sentence tests/unit/prompts/test_filters.py::test_text_alignment_word_bounds_are_inclusive tests/unit/prompts/test_filters.py::test_text_alignment_rejects_two_sentences_of_the_right_length tests/unit/prompts/test_filters.py::test_sets_follow_the_rules tests/unit/prompts/test_filters.py::test_set_properties tests/unit/prompts/test_filters.py::test_histogram_counts_unparseable tests/unit/prompts/test_filters.py::test_dynamic_degree_metric_by_hand tests/unit/prompts/test_filters.py::test_dynamic_degree_metric_properties|*" ;;
    llm) echo "vip/prompts/llm.py|tests/unit/prompts/test_llm_parsing.py tests/unit/prompts/test_llm_backoff.py|backoff_delay AnswerCache.get_many AnswerCache.put GeminiBackend._sleep_before_retry GeminiBackend.ask GeminiBackend._ask_all" ;;
    adaptive) echo "vip/steps/loo/adaptive.py|tests/unit/steps/loo/test_adaptive.py|schedule intervals settled_out still_in_play adaptive_loo from_table" ;;
    *) return 1 ;;
  esac
}

[ $# -gt 0 ] || set -- $MODULES
for m in "$@"; do
  spec "$m" >/dev/null || { echo "unknown module '$m'; expected some of: $MODULES" >&2; exit 2; }
done

for m in "$@"; do
  [ "${MUTATION_REPORT_ONLY:-0}" = 1 ] && break
  IFS='|' read -r file tests scope <<<"$(spec "$m")"
  work=$ROOT/mutants/$m
  mkdir -p "$work"
  for link in vip tests configs; do ln -sfn "../../$link" "$work/$link"; done
  # the project's pyproject.toml with [tool.mutmut] narrowed to this module
  "$PY" - "$work/pyproject.toml" "$file" "$tests" <<'EOF'
import json, re, sys, tomllib
out, file, tests = sys.argv[1], sys.argv[2], sys.argv[3].split()
text = open("pyproject.toml").read()
cfg = tomllib.loads(text)["tool"]["mutmut"]
cfg.update(only_mutate=[file], pytest_add_cli_args_test_selection=tests)
# drop the [tool.mutmut] table (up to the next table header) and write the narrowed one at the end
text = re.sub(r"(?ms)^\[tool\.mutmut\]\n.*?(?=^\[|\Z)", "", text)
text += "\n[tool.mutmut]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in cfg.items())
open(out, "w").write(text)
EOF
  # the mutants to run: every one in the file, or those of the functions in scope
  module=$(echo "${file%.py}" | tr / .)
  # (named explicitly, mutmut re-tests every one of them; unnamed, it keeps earlier results)
  names=("$module.*")
  if [ "$scope" != "*" ]; then
    names=()
    for f in $scope; do
      case $f in
        *.*) names+=("$module.xǁ${f%%.*}ǁ${f#*.}__mutmut_*") ;;
        *) names+=("$module.x_${f}__mutmut_*") ;;
      esac
    done
  fi
  echo "== $m: $file, tests: $tests"
  start=$(date +%s)
  # mutant names are globs for mutmut. Its progress line is long: the log keeps it, the terminal gets the table.
  (cd "$work" && "$PY" -m mutmut run --max-children "$CHILDREN" "${names[@]}" >run.log 2>&1) || {
    tail -c 3000 "$work/run.log" >&2
    echo "mutmut failed for $m (log: $work/run.log)" >&2
    exit 1
  }
  echo "$(( $(date +%s) - start ))" >"$work/seconds"
done

# killed/total per module, from mutmut's own records (mutants/<module>/mutants/<file>.meta)
"$PY" - "$ROOT" "$@" <<'EOF'
import json, sys
from pathlib import Path
from mutmut.stats import status_by_exit_code
root, modules = Path(sys.argv[1]), sys.argv[2:]
spec = {}
for line in Path(root, "scripts/mutation.sh").read_text().splitlines():
    line = line.strip()
    if ") echo \"vip/" in line:
        name, rest = line.split(") echo \"", 1)
        file, tests, scope = rest.split("\"", 1)[0].split("|")
        spec[name] = (file, scope.split())

def function(key: str) -> str:  # vip.curation.x_curate__mutmut_3 -> curate; ...xǁAnswerCacheǁput__mutmut_1 -> AnswerCache.put
    name = key.partition("__mutmut_")[0].rpartition(".")[2]
    return ".".join(name[2:].split("ǁ")) if name.startswith("xǁ") else name[2:]

print(f"\n| module (scope) | mutants | killed | survived | no tests | timeout | other | killed % | seconds |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
survivors = []
for m in modules:
    file, scope = spec[m]
    meta = root / "mutants" / m / "mutants" / (file + ".meta")
    if not meta.is_file():
        print(f"| {file} | no results: run bash scripts/mutation.sh {m} |"); continue
    codes = json.loads(meta.read_text())["exit_code_by_key"]
    status = {k: status_by_exit_code[v] for k, v in codes.items() if scope == ["*"] or function(k) in scope}
    count = lambda s: sum(v == s for v in status.values())
    total, killed = len(status), count("killed")
    other = total - killed - count("survived") - count("no tests") - count("timeout")
    secs = (root / "mutants" / m / "seconds").read_text().strip() if (root / "mutants" / m / "seconds").is_file() else "?"
    what = "all" if scope == ["*"] else ", ".join(scope)
    pct = f"{100 * killed / total:.1f}" if total else "-"
    print(f"| {file} ({what}) | {total} | {killed} | {count('survived')} | {count('no tests')} | {count('timeout')} "
          f"| {other} | {pct} | {secs} |")
    survivors += [(m, k, s) for k, s in sorted(status.items()) if s != "killed"]
if survivors:
    print("\nnot killed (see each with: cd mutants/<module> && ../../.venv/bin/mutmut show <name>):")
    for m, k, s in survivors:
        print(f"  {m}: {k}: {s}")
EOF
