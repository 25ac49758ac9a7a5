#!/usr/bin/env bash
# Restart of a node holding many records (one private dataset, records of about 220 B of JSON,
# written with `fogmesh publish --batch 1000`): how long until the API answers at all, and until
# every record is queryable; resident memory once loaded; the home's size beside the JSON's.
#
#   benches/restart.sh                                  # 1,000,000 records, 3 restarts
#   benches/restart.sh --records 200000 --runs 5
#   benches/restart.sh --binary OLD --home H            # another build on the same home (a
#                                                       # home holding the data is reused)
#
# Needs curl and python3. Prints one line per restart and the figures of the write.
set -euo pipefail

records=1000000
runs=3
binary=""
home=""
while [ $# -gt 0 ]; do
    case "$1" in
        --records) records="$2"; shift 2 ;;
        --runs) runs="$2"; shift 2 ;;
        --binary) binary="$2"; shift 2 ;;
        --home) home="$2"; shift 2 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
here="$(cd "$(dirname "$0")/.." && pwd)"
if [ -z "$binary" ]; then
    (cd "$here" && cargo build --release -q -p fogmesh-node)
    binary="${CARGO_TARGET_DIR:-$here/target}/release/fogmesh"
fi
[ -n "$home" ] || home="$(mktemp -d)/hospital"
dataset=hospital/cases

pid=""
stop() {
    if [ -n "$pid" ]; then
        kill -TERM "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        pid=""
    fi
}
trap stop EXIT

now() { date +%s.%N; }

# Starts the node; sets `first` to the seconds until GET /v1/node answers.
start() {
    rm -f "$home/api.addr"
    local t0; t0=$(now)
    "$binary" run --home "$home" >>"$home/bench.log" 2>&1 &
    pid=$!
    until [ -s "$home/api.addr" ] && curl -sf -o /dev/null -H "Authorization: Bearer $(cat "$home/admin.token")" "http://$(cat "$home/api.addr")/v1/node"; do
        kill -0 "$pid" 2>/dev/null || { echo "the node exited; see $home/bench.log" >&2; exit 1; }
        sleep 0.01
    done
    first=$(echo "$(now) - $t0" | bc)
}

api() { curl -s -H "Authorization: Bearer $(cat "$home/admin.token")" "http://$(cat "$home/api.addr")$1"; }

# The dataset's record count once it is loaded, else nothing.
count() {
    local d; d=$(api "/v1/datasets/$dataset")
    case "$d" in *'"loading"'*) return ;; esac
    echo "$d" | grep -o '"records":[0-9]*' | cut -d: -f2
}

if [ ! -s "$home/bench.records" ]; then
    "$binary" init --home "$home" --org hospital --mesh bench --api 127.0.0.1:0 --listen /ip4/127.0.0.1/tcp/0 --no-mdns >/dev/null
    start
    "$binary" --home "$home" dataset create cases >/dev/null
    json="$(dirname "$home")/records.ndjson"
    python3 - "$records" >"$json" <<'EOF'
import json, random, sys
r = random.Random(7)
symptoms = ["cough", "fever", "headache", "fatigue", "sore throat"]
for i in range(int(sys.argv[1])):
    d = r.randrange(12)
    print(json.dumps({"name": f"district-{d}/clinic-{r.randrange(40)}/case",
        "data": {"age": r.randrange(1, 95), "temp": round(r.uniform(36.0, 40.5), 1),
                 "symptom": r.choice(symptoms), "district": f"district-{d}",
                 "test": r.choice(["positive", "negative", "pending"]), "seq": i}}))
EOF
    t0=$(now)
    "$binary" --home "$home" publish "$dataset" --batch 1000 <"$json" >/dev/null
    took=$(echo "$(now) - $t0" | bc)
    stop
    echo "$records" >"$home/bench.records"
    echo "wrote $records records ($(stat -c %s "$json") B of NDJSON) in ${took} s"
fi
records=$(cat "$home/bench.records")
json_bytes=$(stat -c %s "$(dirname "$home")/records.ndjson" 2>/dev/null || echo 0)
echo "binary $binary; home $home: $(du -sb "$home/data" | cut -f1) B in the store, $json_bytes B of NDJSON"
for run in $(seq "$runs"); do
    start
    t0=$(now)
    until [ "$(count)" = "$records" ]; do sleep 0.1; done
    loaded=$(echo "$(now) - $t0 + $first" | bc)
    rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
    stop
    echo "restart $run: first API answer ${first} s, all $records records queryable ${loaded} s, resident $((rss / 1024)) MiB"
done
