#!/usr/bin/env bash
# Builds the libFuzzer targets (clang, ASan + UBSan, tests/fuzz) and runs each
# for a set time from its committed seeds (tests/fuzz/corpus/NAME), growing a
# working corpus under the build folder. Any crash, leak or sanitizer report
# fails the target and leaves the input in BUILD/fuzz-artifacts.
#
# Slow inputs: libFuzzer's clock is wall time, so on a loaded machine any
# input can pass 1 s. Inputs over 1 s are saved (-report_slow_units=1, as
# slow-unit-*), the run is stopped only past FUZZ_TIMEOUT (default 10 s), and
# every saved slow input is then replayed alone: the target fails when one
# still takes over 1 s. A JSON summary goes to bench/results/fuzz-DATE.json.
#
#   scripts/run_fuzz.sh [SECONDS_PER_TARGET (600)] [TARGET ...]   (make fuzz)
#   FUZZ_BUILD=build-fuzz  FUZZ_JOBS=1 (targets run side by side)  FUZZ_TIMEOUT=10
set -uo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER="${1:-600}"
shift || true
BUILD="${FUZZ_BUILD:-build-fuzz}"
JOBS="${FUZZ_JOBS:-1}"
command -v clang++ >/dev/null || { echo "run_fuzz: clang++ is missing (scripts/setup.sh installs it)" >&2; exit 1; }
if [ ! -f "$BUILD/build.ninja" ]; then
  CC=clang CXX=clang++ cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCARTSERVE_FUZZ=ON -DCARTSERVE_TESTS=OFF || exit 1
fi
cmake --build "$BUILD" --target fuzz_targets -j "$(nproc)" || exit 1
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  for f in tests/fuzz/*_fuzz.cpp; do n=$(basename "$f" .cpp); targets+=("${n%_fuzz}"); done
fi
mkdir -p "$BUILD/fuzz-artifacts" "$BUILD/fuzz-logs" bench/results
run_one() {
  local t="$1" work="$BUILD/fuzz-corpus/$1"
  mkdir -p "$work"
  "$BUILD/bin/fuzz/${t}_fuzz" -max_total_time="$SECONDS_PER" -timeout="${FUZZ_TIMEOUT:-10}" \
    -report_slow_units=1 -rss_limit_mb=4096 \
    -max_len=65536 -print_final_stats=1 -artifact_prefix="$BUILD/fuzz-artifacts/$t-" \
    "$work" "tests/fuzz/corpus/$t" > "$BUILD/fuzz-logs/$t.log" 2>&1
  echo $? > "$BUILD/fuzz-logs/$t.rc"
}
export -f run_one
export BUILD SECONDS_PER FUZZ_TIMEOUT
printf '%s\n' "${targets[@]}" | xargs -P "$JOBS" -I{} bash -c 'run_one {}'
python3 - "$BUILD" "$SECONDS_PER" "${targets[@]}" <<'PY'
import glob, json, os, re, subprocess, sys, time
build, secs, targets = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
out, ok = [], True
for t in targets:
    log = open(f"{build}/fuzz-logs/{t}.log", errors="replace").read()
    rc = int(open(f"{build}/fuzz-logs/{t}.rc").read())
    stat = lambda k: int(m.group(1)) if (m := re.search(rf"stat::{k}:\s+(\d+)", log)) else None
    arts = sorted(os.path.basename(p) for p in glob.glob(f"{build}/fuzz-artifacts/{t}-*")
                  if "slow-unit-" not in p)
    slow = []  # inputs over 1 s during the run, replayed alone
    for p in sorted(glob.glob(f"{build}/fuzz-artifacts/{t}-slow-unit-*")):
        rep = subprocess.run([f"{build}/bin/fuzz/{t}_fuzz", p], capture_output=True, text=True)
        ms = re.search(r"in (\d+) ms", rep.stderr + rep.stdout)
        slow.append({"input": os.path.basename(p), "replay_ms": int(ms.group(1)) if ms else None,
                     "replay_exit": rep.returncode})
    r = {"target": t, "seconds": secs, "exit_code": rc, "runs": stat("number_of_executed_units"),
         "execs_per_sec": stat("average_exec_per_sec"), "peak_rss_mb": stat("peak_rss_mb"),
         "corpus_files": len(os.listdir(f"{build}/fuzz-corpus/{t}")),
         "crashes": log.count("ERROR: libFuzzer: deadly signal") + log.count("ERROR: AddressSanitizer"),
         "leaks": log.count("ERROR: LeakSanitizer"), "timeouts": log.count("ERROR: libFuzzer: timeout"),
         "ubsan": log.count("runtime error:"), "artifacts": arts, "slow_inputs_replayed": slow}
    r["clean"] = rc == 0 and not arts and all(
        s["replay_exit"] == 0 and s["replay_ms"] is not None and s["replay_ms"] < 1000 for s in slow)
    ok = ok and r["clean"]
    out.append(r)
    print(f"{t:20s} {'clean' if r['clean'] else 'FAILED'}  runs {r['runs']}  {r['execs_per_sec']}/s  "
          f"corpus {r['corpus_files']}  artifacts {arts}  slow inputs (replay ms) "
          f"{[s['replay_ms'] for s in slow]}")
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
path = time.strftime("bench/results/fuzz-%Y-%m-%d-%H%M.json")
json.dump({"commit": commit, "machine": os.uname().nodename, "cores": os.cpu_count(),
           "limits": {"slow_input_s": 1, "timeout_s": int(os.environ.get("FUZZ_TIMEOUT", "10")),
                      "rss_limit_mb": 4096, "max_len": 65536},
           "load_average_at_end": os.getloadavg(),
           "sanitizers": "address,undefined,float-cast-overflow (+leak)", "targets": out},
          open(path, "w"), indent=1)
print("run_fuzz: summary in", path)
sys.exit(0 if ok else 1)
PY
