#!/usr/bin/env bash
# Scale-out benchmark on one machine, every part real and on loopback: a writer publishing
# collection COLLECTION of DATA_DIR to a directory store with its pointer in etcd, N read
# replicas (`ragd serve --replica`) behind HAProxy (deploy/haproxy/haproxy.cfg), and
# `ragd bench load` through the proxy. Prints one JSON object per line:
#   {"what":"cold_start", ...}   each replica: process start → /ready 200, and its own log's
#                                download/open figures
#   {"what":"load", ...}         the bench load report through the proxy with N replicas
#   {"what":"load_direct", ...}  the same load straight at one replica (the proxy's cost)
#
#   deploy/haproxy/bench.sh RAGD_BIN DATA_DIR COLLECTION QUERIES [REPLICAS...]
#   e.g. deploy/haproxy/bench.sh target/release/ragd /tmp/pub/idx scifact \
#          ../shared/eval/scifact/queries.jsonl 1 3
# PIN=1 runs replica i on core i-1 alone with one compute thread; CONCURRENCY and REQUESTS set
# the load (8 callers, 1,000 calls).
# Needs etcd and haproxy on PATH (or ETCD / HAPROXY set). Every process it starts is stopped
# when it exits.
set -euo pipefail

ragd="$(realpath "$1")"
data="$(realpath "$2")"
collection="$3"
queries="$(realpath "$4")"
shift 4
counts=("$@"); [ ${#counts[@]} -gt 0 ] || counts=(1 3)
etcd_bin="${ETCD:-$(command -v etcd)}"
haproxy_bin="${HAPROXY:-$(PATH="$PATH:/usr/sbin" command -v haproxy)}"
here="$(cd "$(dirname "$0")" && pwd)"
concurrency="${CONCURRENCY:-8}"
requests="${REQUESTS:-1000}"

work="$(mktemp -d)"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2> /dev/null || true; done
    wait 2> /dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { # port path seconds
    local until=$((SECONDS + $3))
    until curl -fsS "http://127.0.0.1:$1$2" > /dev/null 2>&1; do
        [ $SECONDS -lt $until ] || { echo "127.0.0.1:$1$2 not ready in $3 s" >&2; exit 1; }
        sleep 0.05
    done
}
listening() { # log file → address
    local until=$((SECONDS + 120))
    until grep -q "listening on" "$1" 2> /dev/null; do
        [ $SECONDS -lt $until ] || { echo "no 'listening on' in $1" >&2; tail "$1" >&2; exit 1; }
        sleep 0.05
    done
    grep -o "listening on [0-9.:]*" "$1" | head -1 | cut -d' ' -f3
}

# etcd, one member.
ec=$(port); ep=$(port)
"$etcd_bin" --name b --data-dir "$work/etcd" --listen-client-urls "http://127.0.0.1:$ec" \
    --advertise-client-urls "http://127.0.0.1:$ec" --listen-peer-urls "http://127.0.0.1:$ep" \
    --initial-advertise-peer-urls "http://127.0.0.1:$ep" --initial-cluster "b=http://127.0.0.1:$ep" \
    > "$work/etcd.log" 2>&1 &
pids+=($!)
wait_http "$ec" /health 30

# What a server weighs with its models loaded and no collection: the baseline of rss_mb.
"$ragd" serve --listen 127.0.0.1:0 --data-dir "$work/empty" > "$work/empty.log" 2>&1 &
empty=$!
listening "$work/empty.log" > /dev/null
sleep 1
python3 -c 'import json,sys; print(json.dumps({"what": "baseline", "rss_mb": round(int(sys.argv[1]) / 1024, 1)}))' \
    "$(awk '/VmRSS/ {print $2}' "/proc/$empty/status")"
kill "$empty"; wait "$empty" 2> /dev/null || true

# The writer over a copy of the data directory (a real copy: the writer writes to its DocStore).
cp -a "$data" "$work/writer"
cat > "$work/writer.toml" << EOF
checkpoint_interval_seconds = 1.0
[publish]
url = "$work/store"
etcd = ["http://127.0.0.1:$ec"]
EOF
"$ragd" serve --config "$work/writer.toml" --listen 127.0.0.1:0 --data-dir "$work/writer" \
    > "$work/writer.log" 2>&1 &
pids+=($!)
writer="http://$(listening "$work/writer.log")"
until=$((SECONDS + 120))
until curl -fsS -X POST "http://127.0.0.1:$ec/v3/kv/range" \
    -d "{\"key\":\"$(printf '/ragd/%s/current' "$collection" | base64 -w0)\"}" | grep -q '"kvs"'; do
    [ $SECONDS -lt $until ] || { echo "the writer did not publish in 120 s" >&2; tail "$work/writer.log" >&2; exit 1; }
    sleep 0.2
done

# Starts replicas 1..$1 (fresh: empty data directories, cold query caches), printing each one's
# cold start; sets addrs, readys, rpids.
start_replicas() {
    addrs=(); readys=(); rpids=()
    local i ready d t0 t_listen t_ready addr loaded
    for i in $(seq 1 "$1"); do
        ready=$(port)
        d="$work/replica-$round-$i"
        printf '[replica]\nurl = "%s"\netcd = ["http://127.0.0.1:%s"]\nwriter = "%s"\nname = "bench-%s-%s"\npoll_seconds = 0.5\n' \
            "$work/store" "$ec" "$writer" "$round" "$i" > "$d.toml"
        t0=$(date +%s.%N)
        pin=()
        # PIN=1: replica i on core i-1 alone, one compute thread (how replicas on separate
        # machines scale, seen on one machine's cores).
        [ "${PIN:-0}" = 1 ] && pin=(env RAYON_NUM_THREADS=1 taskset -c $(( (i - 1) % $(nproc) )))
        "${pin[@]}" "$ragd" serve --replica --config "$d.toml" --listen 127.0.0.1:0 \
            --metrics-listen "127.0.0.1:$ready" --data-dir "$d" > "$d.log" 2>&1 &
        rpids+=($!); pids+=($!)
        addr=$(listening "$d.log")
        t_listen=$(date +%s.%N)
        wait_http "$ready" /ready 300
        t_ready=$(date +%s.%N)
        sleep 0.5
        rss=$(awk '/VmRSS/ {print $2}' "/proc/${rpids[-1]}/status")
        loaded=$(grep -o 'serving a new published generation.*' "$d.log" | head -1 || true)
        python3 -c '
import json, re, sys
i, n, line = int(sys.argv[1]), int(sys.argv[2]), sys.argv[6]
t0, tl, tr = map(float, sys.argv[3:6])
f = dict(re.findall(r"(\w+)=([0-9.]+)", line))
print(json.dumps({"what": "cold_start", "replicas": n, "replica": i,
                  "rss_mb": round(int(sys.argv[7]) / 1024, 1),
                  "start_to_listening_s": round(tl - t0, 3),
                  "listening_to_ready_s": round(tr - tl, 3),
                  "start_to_ready_s": round(tr - t0, 3),
                  "generation_mb": float(f.get("mb", 0)),
                  "download_s": float(f.get("download_s", 0)),
                  "fetch_open_swap_s": float(f.get("total_s", 0))}))
' "$i" "$1" "$t0" "$t_listen" "$t_ready" "$loaded" "$rss"
        addrs+=("$addr"); readys+=("$ready")
    done
}
stop_replicas() {
    local p
    for p in "${rpids[@]}"; do kill "$p" 2> /dev/null || true; wait "$p" 2> /dev/null || true; done
}
load() { # url what replicas
    "$ragd" bench load --server "$1" --collection "$collection" --queries "$queries" \
        --concurrency "$concurrency" --requests "$requests" --json \
        | python3 -c "import json,sys; r=json.load(sys.stdin); r['what']='$2'; r['replicas']=$3; print(json.dumps(r))"
}

round=0
for n in "${counts[@]}"; do
    [ "$n" -le 3 ] || { echo "at most 3 replicas (the HAProxy config names three)" >&2; exit 1; }
    round=$((round + 1))
    start_replicas "$n"
    hp=$(port)
    env=(PROXY_LISTEN="127.0.0.1:$hp")
    for i in 1 2 3; do
        # Fewer replicas than three: the missing lines point at the first (the config names three).
        j=$(( i <= n ? i : 1 ))
        env+=("REPLICA$i=${addrs[$((j - 1))]}" "REPLICA${i}_READY=${readys[$((j - 1))]}")
    done
    env "${env[@]}" "$haproxy_bin" -f "$here/haproxy.cfg" -db > "$work/haproxy$round.log" 2>&1 &
    hpid=$!
    sleep 1.5
    load "http://127.0.0.1:$hp" load "$n"
    kill "$hpid"; wait "$hpid" 2> /dev/null || true
    stop_replicas
done
round=$((round + 1))
start_replicas 1 > /dev/null
load "http://${addrs[0]}" load_direct 1
stop_replicas
