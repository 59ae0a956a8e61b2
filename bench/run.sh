#!/usr/bin/env bash
# The benchmark of issue 6 ("Speed"): Portcullis against nginx and HAProxy
# on loopback. See bench/README.md for what it measures and how to read it.
#
#   bash bench/run.sh [--quick] [--rounds N] [--duration S] [--connections N]
#                     [--memory] [--no-install] [-h]
#
# Everything runs on 127.0.0.1 (ports PORT_BASE .. PORT_BASE+51); every
# process it starts is stopped by PID when it exits; the whole run is bounded
# by `timeout` (BENCH_TIME_LIMIT seconds). Work files: bench/.work/ (ignored
# by git): tokens/ (cached between runs) and run/ (this run's configs, logs
# and results, kept until the next run).
set -euo pipefail

usage() {
	sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
	cat <<'EOF'
Options (flags win over the environment variables named in brackets):
  --quick            smoke test: 1 round of 3 s per case
  --rounds N         interleaved rounds [ROUNDS, default 3]
  --duration S       seconds per case and round [DURATION, default 10]
  --connections N    wrk connections [CONNECTIONS, default 64]
  --memory           also: RSS holding 10,000 idle connections, and after
                     100,000 unique tokens went through [MEMORY=1]
  --no-install       do not apt-get install missing tools [NO_INSTALL=1]
Other environment variables:
  H2_CONNECTIONS (16), H2_STREAMS (10)    h2load -c and -m
  UNIQUE_RATE (50000)    unique tokens minted per second of a case: each
                         round gets DURATION x UNIQUE_RATE tokens of its own
  PORT_BASE (18000)      first port used
  LOADGEN_CPU (0), SERVER_CPU (1)          taskset cores
  BENCH_TIME_LIMIT       bound on the whole run in seconds (default
                         1800 + 3 x ROUNDS x DURATION x 8 cases)
  CARGO_TARGET_DIR       where cargo builds (default: the repo's target/)
EOF
}

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-64}
H2_CONNECTIONS=${H2_CONNECTIONS:-16}
H2_STREAMS=${H2_STREAMS:-10}
UNIQUE_RATE=${UNIQUE_RATE:-50000}
PORT_BASE=${PORT_BASE:-18000}
MEMORY=${MEMORY:-0}
NO_INSTALL=${NO_INSTALL:-0}
LOADGEN_CPU=${LOADGEN_CPU:-0}
SERVER_CPU=${SERVER_CPU:-1}
QUICK=0
ARGS=("$@")
COMMAND_LINE="bash bench/run.sh${*:+ $*}"

while (($#)); do
	case $1 in
	--quick) QUICK=1 ROUNDS=1 DURATION=3 ;;
	--rounds) ROUNDS=${2:?--rounds needs a number} && shift ;;
	--duration) DURATION=${2:?--duration needs seconds} && shift ;;
	--connections) CONNECTIONS=${2:?--connections needs a number} && shift ;;
	--memory) MEMORY=1 ;;
	--no-install) NO_INSTALL=1 ;;
	-h | --help) usage && exit 0 ;;
	*) echo "run.sh: unknown argument $1 (try --help)" >&2 && exit 2 ;;
	esac
	shift
done
for value in ROUNDS DURATION CONNECTIONS H2_CONNECTIONS H2_STREAMS UNIQUE_RATE PORT_BASE; do
	[[ ${!value} =~ ^[1-9][0-9]*$ ]] || { echo "run.sh: $value must be a positive integer, not '${!value}'" >&2 && exit 2; }
done

CASES=9
if [[ -z ${BENCH_UNDER_TIMEOUT:-} ]]; then
	# bound the whole run: timeout signals this script (whose trap stops what
	# it started) and, failing that, kills the process group
	export BENCH_UNDER_TIMEOUT=1 BENCH_COMMAND_LINE=$COMMAND_LINE
	export ROUNDS DURATION CONNECTIONS MEMORY NO_INSTALL
	limit=${BENCH_TIME_LIMIT:-$((1800 + 3 * ROUNDS * DURATION * CASES))}
	exec timeout --kill-after=20 "$limit" bash "$0" "${ARGS[@]}"
fi
COMMAND_LINE=${BENCH_COMMAND_LINE:-$COMMAND_LINE}

BENCH=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$BENCH")
WORK=$BENCH/.work
RUN=$WORK/run
TOKENS=$WORK/tokens
cd "$REPO"

say() { printf '%s\n' "$*"; }
die() {
	printf 'run.sh: FAILED: %s\n' "$*" >&2
	exit 1
}

# --- everything started is stopped by PID ------------------------------------
PIDS=()
declare -A PID
cleanup() {
	local rc=$? pid
	trap - EXIT INT TERM
	for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
	for pid in "${PIDS[@]}"; do
		for _ in $(seq 50); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		kill -KILL "$pid" 2>/dev/null || true
	done
	wait 2>/dev/null || true
	((rc == 0)) || say "run.sh: exit $rc; logs in $RUN" >&2
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start NAME CMD...: runs CMD in the background, pinned to the server core
start() {
	local name=$1
	shift
	taskset -c "$SERVER_CPU" "$@" >"$RUN/$name.out" 2>"$RUN/$name.err" &
	PID[$name]=$!
	PIDS+=("$!")
}

# wait_status URL STATUS [curl args...]: polls until URL answers STATUS (10 s)
wait_status() {
	local url=$1 want=$2 got=
	shift 2
	for _ in $(seq 200); do
		got=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$@" "$url" || true)
		[[ $got == "$want" ]] && return 0
		sleep 0.05
	done
	local name
	for name in "${!PID[@]}"; do
		kill -0 "${PID[$name]}" 2>/dev/null || say "run.sh: $name exited: $(tail -3 "$RUN/$name.err")" >&2
	done
	die "$url answered ${got:-nothing}, not $want, within 10 s"
}

# --- tools --------------------------------------------------------------------
need=()
for tool in nginx:nginx haproxy:haproxy wrk:wrk h2load:nghttp2-client curl:curl python3:python3 taskset:util-linux ss:iproute2 pgrep:procps; do
	command -v "${tool%%:*}" >/dev/null || need+=("${tool#*:}")
done
if ((${#need[@]})); then
	((NO_INSTALL == 0)) || die "missing packages: ${need[*]} (and --no-install given)"
	say "# installing ${need[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq >/dev/null
	apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
HAPROXY_VERSION=$(haproxy -v | sed -n '1s/^HAProxy version \([^ ]*\).*/\1/p')
[[ $HAPROXY_VERSION == 2.6.* ]] || say "# NOTE: HAProxy is $HAPROXY_VERSION, not 2.6 as in issue 6"

# --- the machine ----------------------------------------------------------------
NPROC=$(nproc)
if ((NPROC < 2)); then
	say "# NOTE: one core only: load generator and servers share it"
	LOADGEN_CPU=0 SERVER_CPU=0
fi
cpu_model=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
git_rev=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
[[ -z $(git --no-optional-locks status --porcelain 2>/dev/null) ]] || git_rev+=" + uncommitted changes"
rm -rf "$RUN"
mkdir -p "$RUN" "$TOKENS"
{
	say "# command: $COMMAND_LINE"
	say "# settings: ROUNDS=$ROUNDS DURATION=${DURATION}s CONNECTIONS=$CONNECTIONS H2=${H2_CONNECTIONS}x$H2_STREAMS UNIQUE_RATE=$UNIQUE_RATE MEMORY=$MEMORY"
	say "# machine: $NPROC cores, $cpu_model, kernel $(uname -r), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)"
	say "# load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
	say "# versions: $(nginx -v 2>&1 | sed 's/^nginx version: //'), HAProxy $HAPROXY_VERSION, $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2), $(h2load --version | head -1), $(rustc --version | cut -d' ' -f1-2), portcullis $git_rev"
	say "# pinning: load generator (wrk, h2load, probes) on core $LOADGEN_CPU; every server on core $SERVER_CPU, the upstream nginx too"
} | tee "$RUN/header.txt"

# --- build ---------------------------------------------------------------------------
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
say "# building (cargo build --release --locked --bin portcullis --example mint, target dir $TARGET_DIR)"
cargo build --release --locked --bin portcullis --example mint --quiet
PORTCULLIS=$TARGET_DIR/release/portcullis
MINT=$TARGET_DIR/release/examples/mint

# --- keys and tokens -------------------------------------------------------------
PER_SLICE=$((UNIQUE_RATE * DURATION))
((MEMORY == 0 || PER_SLICE >= 100000)) || PER_SLICE=100000
say "# minting into $TOKENS: $ROUNDS x $PER_SLICE unique tokens (kept between runs while valid)"
"$MINT" --out "$TOKENS" --slices "$ROUNDS" --per-slice "$PER_SLICE"
TOKEN=$(<"$TOKENS/token.txt")
BAD_TOKEN=$(<"$TOKENS/bad-token.txt")
EXPIRED_TOKEN=$(<"$TOKENS/expired-token.txt")
ISSUER=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["issuer"])' "$TOKENS/manifest.json")
AUDIENCE=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["audience"])' "$TOKENS/manifest.json")

# --- ports -------------------------------------------------------------------------
UP=$PORT_BASE JWKS=$((PORT_BASE + 1))
NGINX=$((PORT_BASE + 10))
HAP=$((PORT_BASE + 20)) HAP_H2=$((PORT_BASE + 21))
HAPJWT=$((PORT_BASE + 30))
PC=$((PORT_BASE + 40)) PC_ADMIN=$((PORT_BASE + 41))
PCR=$((PORT_BASE + 42)) PCR_ADMIN=$((PORT_BASE + 43))
PCM=$((PORT_BASE + 50)) PCM_ADMIN=$((PORT_BASE + 51))
for port in $UP $JWKS $NGINX $HAP $HAP_H2 $HAPJWT $PC $PC_ADMIN $PCM $PCM_ADMIN; do
	[[ -z $(ss -Htln "sport = :$port") ]] || die "port $port is in use (set PORT_BASE)"
done
# many connections (the memory probe holds 10,000): as many descriptors as allowed
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

# --- configs -------------------------------------------------------------------------
nginx_common() {
	cat <<EOF
worker_processes 1;
pid $RUN/$1.pid;
error_log $RUN/$1.error.log warn;
events { worker_connections 20000; }
http {
    access_log off;
    client_body_temp_path $RUN/$1.tmp;
    proxy_temp_path $RUN/$1.tmp;
    fastcgi_temp_path $RUN/$1.tmp;
    uwsgi_temp_path $RUN/$1.tmp;
    scgi_temp_path $RUN/$1.tmp;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
EOF
}
{
	nginx_common upstream
	cat <<EOF
    server {
        listen 127.0.0.1:$UP;
        location / { default_type text/plain; return 200 "ok"; }
    }
    server {
        listen 127.0.0.1:$JWKS;
        location = /jwks.json { default_type application/json; alias $TOKENS/jwks.json; }
    }
}
EOF
} >"$RUN/nginx-upstream.conf"
{
	nginx_common nginx-proxy
	cat <<EOF
    upstream up {
        server 127.0.0.1:$UP;
        keepalive 64;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$NGINX;
        location / {
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
} >"$RUN/nginx-proxy.conf"

haproxy_common() {
	cat <<EOF
global
    nbthread 1
    maxconn 5000

defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s
    http-reuse always

backend upstream
    server upstream 127.0.0.1:$UP
EOF
}
{
	haproxy_common
	cat <<EOF

frontend plain
    bind 127.0.0.1:$HAP
    bind 127.0.0.1:$HAP_H2 proto h2
    default_backend upstream
EOF
} >"$RUN/haproxy-plain.cfg"
{
	haproxy_common
	cat <<EOF

frontend jwt
    bind 127.0.0.1:$HAPJWT
    http-request set-var(txn.alg) http_auth_bearer,jwt_header_query('\$.alg')
    http-request deny deny_status 401 unless { var(txn.alg) -m str RS256 }
    http-request set-var(txn.iss) http_auth_bearer,jwt_payload_query('\$.iss')
    http-request deny deny_status 401 unless { var(txn.iss) -m str $ISSUER }
    http-request set-var(txn.aud) http_auth_bearer,jwt_payload_query('\$.aud')
    http-request deny deny_status 401 unless { var(txn.aud) -m str $AUDIENCE }
    http-request set-var(txn.exp) http_auth_bearer,jwt_payload_query('\$.exp','int')
    http-request set-var(txn.now) date()
    http-request deny deny_status 401 unless { var(txn.exp),sub(txn.now) gt 0 }
    http-request deny deny_status 401 unless { http_auth_bearer,jwt_verify(txn.alg,"$TOKENS/key.pem") 1 }
    default_backend upstream
EOF
} >"$RUN/haproxy-jwt.cfg"

# portcullis_config FILE LISTEN ADMIN ROUTES [EXTRA [server] LINES]
portcullis_config() {
	local file=$1 listen=$2 admin=$3 routes=$4 extra=${5:-} i
	{
		say "# made by bench/run.sh"
		say "[server]"
		say "listen = \"127.0.0.1:$listen\""
		[[ -z $extra ]] || say "$extra"
		say ""
		say "[admin]"
		say "listen = \"127.0.0.1:$admin\""
		say ""
		say "[log]"
		say "level = \"warn\""
		say ""
		say "[[providers]]"
		say "name = \"bench\""
		say "issuer = \"$ISSUER\""
		say "audiences = [\"$AUDIENCE\"]"
		say "jwks_url = \"http://127.0.0.1:$JWKS/jwks.json\""
		say ""
		say "[[routes]]"
		say "name = \"all\""
		say "path = \"/\""
		say "upstream = \"http://127.0.0.1:$UP\""
		# what a real route does with a verified token: the upstream learns who
		say "inject_headers = { \"x-user-id\" = \"sub\" }"
		for ((i = 1; i < routes; i++)); do
			say ""
			say "[[routes]]"
			say "name = \"r$i\""
			say "path = \"/r$i\""
			say "upstream = \"http://127.0.0.1:$UP\""
		done
	} >"$file"
}

# [server] workers = 1 where this Portcullis knows the key
SERVER_EXTRA="workers = 1"
portcullis_config "$RUN/portcullis.toml" "$PC" "$PC_ADMIN" 1 "$SERVER_EXTRA"
if "$PORTCULLIS" check --config "$RUN/portcullis.toml" >"$RUN/check.out" 2>&1; then
	WORKERS_NOTE="[server] workers = 1 (accepted by portcullis check)"
else
	SERVER_EXTRA=""
	WORKERS_NOTE="[server] workers not set: portcullis check refused it ($(grep -m1 -i workers "$RUN/check.out" || head -1 "$RUN/check.out"))"
	portcullis_config "$RUN/portcullis.toml" "$PC" "$PC_ADMIN" 1
fi
say "# portcullis: $WORKERS_NOTE" | tee -a "$RUN/header.txt"
portcullis_config "$RUN/portcullis-10routes.toml" "$PCM" "$PCM_ADMIN" 10 "${SERVER_EXTRA}${SERVER_EXTRA:+$'\n'}max_connections = 20000"
# The same gateway checking every token against 100,000 live revocations
# (issue 7): 50,000 jtis and 50,000 sub cut-offs, none of them the bench
# token's, so each request pays for the lookups that miss, the common case.
python3 - "$RUN/revoked.toml" <<'EOF'
import sys, time
now = int(time.time())
with open(sys.argv[1], "w") as f:
    for i in range(50_000):
        f.write(f'[[revoked]]\njti = "bench-revoked-{i:06d}"\nexp = {now + 86_400}\n')
        f.write(f'[[revoked]]\nsub = "bench-revoked-user-{i:06d}"\nbefore = {now}\n')
EOF
sed -e "s/127.0.0.1:$PC\"/127.0.0.1:$PCR\"/" -e "s/127.0.0.1:$PC_ADMIN\"/127.0.0.1:$PCR_ADMIN\"/" \
	-e 's/^jwks_url = .*/&\nrevocation = true/' "$RUN/portcullis.toml" >"$RUN/portcullis-revocation.toml"
printf '\n[revocation]\nbackend = "file"\nfile = "%s"\n' "$RUN/revoked.toml" >>"$RUN/portcullis-revocation.toml"
for config in portcullis portcullis-10routes portcullis-revocation; do
	"$PORTCULLIS" check --config "$RUN/$config.toml" >"$RUN/check-$config.out" 2>&1 ||
		die "portcullis check --config $RUN/$config.toml: $(cat "$RUN/check-$config.out")"
done
haproxy -c -q -f "$RUN/haproxy-plain.cfg" || die "haproxy -c -f $RUN/haproxy-plain.cfg"
haproxy -c -q -f "$RUN/haproxy-jwt.cfg" || die "haproxy -c -f $RUN/haproxy-jwt.cfg"
mkdir -p "$RUN/upstream.tmp" "$RUN/nginx-proxy.tmp"
nginx -t -q -p "$RUN" -e "$RUN/nginx-test.log" -c "$RUN/nginx-upstream.conf" || die "nginx -t $RUN/nginx-upstream.conf"
nginx -t -q -p "$RUN" -e "$RUN/nginx-test.log" -c "$RUN/nginx-proxy.conf" || die "nginx -t $RUN/nginx-proxy.conf"

# --- servers -------------------------------------------------------------------------
start upstream nginx -p "$RUN" -e "$RUN/upstream.error.log" -c "$RUN/nginx-upstream.conf" -g 'daemon off;'
wait_status "http://127.0.0.1:$UP/" 200
wait_status "http://127.0.0.1:$JWKS/jwks.json" 200
start nginx-proxy nginx -p "$RUN" -e "$RUN/nginx-proxy.error.log" -c "$RUN/nginx-proxy.conf" -g 'daemon off;'
start haproxy-plain haproxy -db -f "$RUN/haproxy-plain.cfg"
start haproxy-jwt haproxy -db -f "$RUN/haproxy-jwt.cfg"
start portcullis "$PORTCULLIS" run --config "$RUN/portcullis.toml"
start portcullis-revocation "$PORTCULLIS" run --config "$RUN/portcullis-revocation.toml"
wait_status "http://127.0.0.1:$NGINX/" 200
wait_status "http://127.0.0.1:$HAP/" 200
wait_status "http://127.0.0.1:$HAPJWT/" 401
wait_status "http://127.0.0.1:$PC_ADMIN/readyz" 200
wait_status "http://127.0.0.1:$PCR_ADMIN/readyz" 200

# --- checks ----------------------------------------------------------------------------
# expect TARGET WHAT STATUS URL [curl args...]
expect() {
	local target=$1 what=$2 want=$3 url=$4 got
	shift 4
	got=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$@" "$url" || true)
	printf '  %-12s %-16s -> %s\n' "$target" "$what" "${got:-nothing}"
	[[ $got == "$want" ]] || die "check: $target ($url), $what: answered ${got:-nothing}, not $want"
}
UNIQUE_SAMPLE=$(tail -n 1 "$TOKENS/unique-$((ROUNDS - 1)).txt")
say "# checks"
expect nginx "no token" 200 "http://127.0.0.1:$NGINX/"
expect haproxy "no token" 200 "http://127.0.0.1:$HAP/"
expect haproxy "h2c, no token" 200 "http://127.0.0.1:$HAP_H2/" --http2-prior-knowledge
for target in haproxy+jwt:$HAPJWT portcullis:$PC portcullis+rev:$PCR; do
	name=${target%:*} port=${target##*:}
	expect "$name" "good token" 200 "http://127.0.0.1:$port/" -H "Authorization: Bearer $TOKEN"
	expect "$name" "a unique token" 200 "http://127.0.0.1:$port/" -H "Authorization: Bearer $UNIQUE_SAMPLE"
	expect "$name" "bad token" 401 "http://127.0.0.1:$port/" -H "Authorization: Bearer $BAD_TOKEN"
	expect "$name" "expired token" 401 "http://127.0.0.1:$port/" -H "Authorization: Bearer $EXPIRED_TOKEN"
	expect "$name" "no token" 401 "http://127.0.0.1:$port/"
done
expect portcullis "h2c, good token" 200 "http://127.0.0.1:$PC/" --http2-prior-knowledge -H "Authorization: Bearer $TOKEN"
expect portcullis "h2c, bad token" 401 "http://127.0.0.1:$PC/" --http2-prior-knowledge -H "Authorization: Bearer $BAD_TOKEN"

# --- measuring -----------------------------------------------------------------------------
CLK_TCK=$(getconf CLK_TCK)
# server_pids NAME: the process and its children (nginx: master and worker)
server_pids() {
	local pid=${PID[$1]}
	echo "$pid" "$(pgrep -P "$pid" | tr '\n' ' ')"
}
# cpu_ticks PID...: utime + stime of the processes (all their threads)
cpu_ticks() {
	local pid total=0 fields
	for pid in "$@"; do
		fields=$(sed 's/^.*) //' "/proc/$pid/stat") || die "process $pid is gone"
		total=$((total + $(awk '{print $12 + $13}' <<<"$fields")))
	done
	echo "$total"
}

cat >"$RUN/report.lua" <<'EOF'
local threads = {}
function setup(thread) table.insert(threads, thread) end
function done(summary, latency, requests)
  local wraps = 0
  for _, thread in ipairs(threads) do wraps = wraps + (thread:get("wraps") or 0) end
  local e = summary.errors
  io.write(string.format(
    "RESULT requests=%d duration_us=%d p50_us=%d p99_us=%d connect=%d read=%d write=%d timeout=%d status=%d wraps=%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect, e.read, e.write, e.timeout, e.status, wraps))
end
EOF
# static requests: one token for all, set once (wrk pre-builds the request)
{
	cat "$RUN/report.lua"
	cat <<'EOF'
function init(args)
  if args[1] then wrk.headers["Authorization"] = "Bearer " .. args[1] end
end
EOF
} >"$RUN/static.lua"
# unique tokens: each request takes the next line of the token file
{
	cat "$RUN/report.lua"
	cat <<'EOF'
local file, path
wraps = 0
function init(args)
  path = args[1]
  file = assert(io.open(path, "r"))
end
function request()
  local token = file:read("*l")
  if not token then
    wraps = wraps + 1
    file:seek("set", 0)
    token = file:read("*l")
  end
  return wrk.format(nil, nil, { ["Authorization"] = "Bearer " .. token })
end
EOF
} >"$RUN/unique.lua"

say "round	case	target	requests	rps	p50_us	p99_us	cpu_us_per_req	upstream_cpu_us_per_req	non2xx	errors	wraps" >"$RUN/results.tsv"

# measure ROUND CASE SERVER PORT KIND [TOKEN|TOKEN_FILE]
#   KIND: static | unique (wrk, HTTP/1.1) or h2 (h2load)
measure() {
	local round=$1 case=$2 server=$3 port=$4 kind=$5 arg=${6:-} pids up_pids before up_before
	read -ra pids <<<"$(server_pids "$server")"
	read -ra up_pids <<<"$(server_pids upstream)"
	local log=$RUN/logs/$round-$case
	before=$(cpu_ticks "${pids[@]}")
	up_before=$(cpu_ticks "${up_pids[@]}")
	if [[ $kind == h2 ]]; then
		local auth=()
		[[ -z $arg ]] || auth=(-H "authorization: Bearer $arg")
		timeout $((DURATION + 60)) taskset -c "$LOADGEN_CPU" h2load -t1 -c "$H2_CONNECTIONS" -m "$H2_STREAMS" \
			-D "$DURATION" --log-file="$log.requests" "${auth[@]}" "http://127.0.0.1:$port/" >"$log.out" 2>&1 ||
			die "h2load against $case: $(tail -5 "$log.out")"
	else
		timeout $((DURATION + 60)) taskset -c "$LOADGEN_CPU" wrk -t1 -c "$CONNECTIONS" -d "${DURATION}s" \
			-s "$RUN/$kind.lua" "http://127.0.0.1:$port/" ${arg:+-- "$arg"} >"$log.out" 2>&1 ||
			die "wrk against $case: $(tail -5 "$log.out")"
	fi
	local after up_after
	after=$(cpu_ticks "${pids[@]}")
	up_after=$(cpu_ticks "${up_pids[@]}")
	python3 - "$log" "$kind" "$round" "$case" "$server" $((after - before)) $((up_after - up_before)) "$CLK_TCK" <<'EOF' >>"$RUN/results.tsv" || die "$case: $(tail -3 "$log.out")"
import re, sys
log, kind, rnd, case, server, ticks, up_ticks, clk = sys.argv[1:]
out = open(log + ".out").read()
if kind == "h2":
    m = re.search(r"finished in ([\d.]+)s, ([\d.]+) req/s", out)
    r = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout", out)
    s = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    if not (m and r and s):
        sys.exit(f"cannot read h2load's output in {log}.out")
    rps, requests = float(m.group(2)), int(r.group(4))
    non2xx = int(r.group(3)) - int(s.group(1))
    errors = int(r.group(5)) + int(r.group(6)) + int(r.group(7))
    times = sorted(int(line.split("\t")[2]) for line in open(log + ".requests") if line.count("\t") >= 2)
    pct = lambda p: times[min(len(times) - 1, int(p / 100 * len(times)))] if times else 0
    p50, p99, wraps = pct(50), pct(99), 0
else:
    m = re.search(r"^RESULT (.*)$", out, re.M)
    if not m:
        sys.exit(f"no RESULT line in {log}.out")
    v = {k: int(x) for k, x in (kv.split("=") for kv in m.group(1).split())}
    requests = v["requests"]
    rps = requests / (v["duration_us"] / 1e6)
    p50, p99, wraps = v["p50_us"], v["p99_us"], v["wraps"]
    non2xx = v["status"]
    errors = v["connect"] + v["read"] + v["write"] + v["timeout"]
us = lambda t: int(t) / int(clk) * 1e6 / max(requests, 1)
print(f"{rnd}\t{case}\t{server}\t{requests}\t{rps:.0f}\t{p50}\t{p99}\t{us(ticks):.2f}\t{us(up_ticks):.2f}\t{non2xx}\t{errors}\t{wraps}")
EOF
	rm -f "$log.requests"
	local line
	line=$(tail -1 "$RUN/results.tsv")
	IFS=$'\t' read -r _ _ _ requests rps p50 p99 cpu upcpu non2xx errors wraps <<<"$line"
	printf '  round %s  %-22s %8s req/s  p50 %6s us  p99 %6s us  cpu %6s us/req  (upstream %s)%s\n' \
		"$round" "$case" "$rps" "$p50" "$p99" "$cpu" "$upcpu" "$( ((wraps == 0)) || echo "  WRAPPED $wraps x")"
	((non2xx == 0 && errors == 0)) || die "$case (round $round): $non2xx non-2xx responses and $errors socket errors of $requests; see $log.out"
}

mkdir -p "$RUN/logs"
say "# warm-up: 1 s per HTTP/1.1 target, not recorded"
for target in "$NGINX" "$HAP" "$HAPJWT" "$PC" "$PCR"; do
	taskset -c "$LOADGEN_CPU" wrk -t1 -c "$CONNECTIONS" -d 1s -s "$RUN/static.lua" "http://127.0.0.1:$target/" -- "$TOKEN" >/dev/null
done

say "# $ROUNDS interleaved round(s) of $CASES cases x ${DURATION}s"
for ((round = 1; round <= ROUNDS; round++)); do
	slice=$TOKENS/unique-$((round - 1)).txt
	measure "$round" nginx nginx-proxy "$NGINX" static "$TOKEN"
	measure "$round" haproxy haproxy-plain "$HAP" static "$TOKEN"
	measure "$round" haproxy+jwt haproxy-jwt "$HAPJWT" static "$TOKEN"
	measure "$round" portcullis portcullis "$PC" static "$TOKEN"
	measure "$round" portcullis-revocation portcullis-revocation "$PCR" static "$TOKEN"
	measure "$round" haproxy+jwt-unique haproxy-jwt "$HAPJWT" unique "$slice"
	measure "$round" portcullis-unique portcullis "$PC" unique "$slice"
	measure "$round" haproxy-h2 haproxy-plain "$HAP_H2" h2 "$TOKEN"
	measure "$round" portcullis-h2 portcullis "$PC" h2 "$TOKEN"
done

# --- start-up and memory (a Portcullis of its own, ten routes) ---------------------------
PC_CMD=(taskset -c "$SERVER_CPU" "$PORTCULLIS" run --config "$RUN/portcullis-10routes.toml")
say "# start-up: a Portcullis with one provider and ten routes, started 3 x 2 times"
taskset -c "$LOADGEN_CPU" python3 "$BENCH/probe.py" startup --gateway "127.0.0.1:$PCM" --admin "127.0.0.1:$PCM_ADMIN" \
	--token "$TOKEN" -- "${PC_CMD[@]}" >"$RUN/startup.out" || die "start-up probe: $(cat "$RUN/startup.out")"
cat "$RUN/startup.out"
if ((MEMORY)); then
	say "# memory: 10,000 idle keep-alive connections, then 100,000 unique tokens"
	taskset -c "$LOADGEN_CPU" python3 "$BENCH/probe.py" memory --gateway "127.0.0.1:$PCM" --admin "127.0.0.1:$PCM_ADMIN" \
		--token "$TOKEN" --tokens "$TOKENS/unique-0.txt" --count 100000 --connections 10000 -- "${PC_CMD[@]}" \
		>"$RUN/memory.out" || die "memory probe: $(cat "$RUN/memory.out")"
	cat "$RUN/memory.out"
fi

# --- the table ----------------------------------------------------------------------------
python3 - "$RUN" "$ROUNDS" "$DURATION" "$QUICK" "$MEMORY" <<'EOF' | tee "$RUN/table.md"
import csv, os, re, statistics, sys
run, rounds, duration, quick, memory = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1", sys.argv[5] == "1"
rows = list(csv.DictReader(open(os.path.join(run, "results.tsv")), delimiter="\t"))
order = ["nginx", "haproxy", "haproxy+jwt", "portcullis", "portcullis-revocation", "haproxy+jwt-unique", "portcullis-unique", "haproxy-h2", "portcullis-h2"]
what = {
    "nginx": "nginx plain proxy, HTTP/1.1",
    "haproxy": "HAProxy plain proxy, HTTP/1.1",
    "haproxy+jwt": "HAProxy + jwt_verify, repeated token",
    "portcullis": "Portcullis, repeated token",
    "portcullis-revocation": "Portcullis, repeated token, 100,000 revocations",
    "haproxy+jwt-unique": "HAProxy + jwt_verify, unique tokens",
    "portcullis-unique": "Portcullis, unique tokens",
    "haproxy-h2": "HAProxy plain proxy, h2c",
    "portcullis-h2": "Portcullis, h2c, repeated token",
}
med = {}
for case in order:
    rs = [r for r in rows if r["case"] == case]
    if not rs:
        continue
    m = lambda k: statistics.median(float(r[k]) for r in rs)
    med[case] = {k: m(k) for k in ("rps", "p50_us", "p99_us", "cpu_us_per_req", "upstream_cpu_us_per_req")}
    med[case]["runs"] = [int(r["rps"]) for r in rs]
    med[case]["wraps"] = sum(int(r["wraps"]) for r in rs)
out = []
w = out.append
label = "smoke run (--quick: 1 round of 3 s; not a measurement to quote)" if quick else f"{rounds} round(s) of {duration} s per case, medians"
w(f"Results: {label}")
w("")
w("| case | req/s | p50 ms | p99 ms | server CPU µs/req | upstream CPU µs/req | req/s per round |")
w("|---|---:|---:|---:|---:|---:|---|")
for case in order:
    if case in med:
        d = med[case]
        w(f"| {what[case]} | {d['rps']:,.0f} | {d['p50_us']/1000:.2f} | {d['p99_us']/1000:.2f} | {d['cpu_us_per_req']:.1f} | {d['upstream_cpu_us_per_req']:.1f} | {', '.join(f'{x:,}' for x in d['runs'])} |")
w("")
def ratio(a, b, k="rps"):
    return med[a][k] / med[b][k] if a in med and b in med and med[b][k] else float("nan")
checks = [
    ("repeated token: Portcullis / nginx req/s", ratio("portcullis", "nginx"), ">= 1.0", lambda x: x >= 1.0),
    ("repeated token: Portcullis p99 / nginx p99", ratio("portcullis", "nginx", "p99_us"), "<= 1.0", lambda x: x <= 1.0),
    ("repeated token: Portcullis / HAProxy+jwt req/s", ratio("portcullis", "haproxy+jwt"), ">= 3.0", lambda x: x >= 3.0),
    ("unique tokens: Portcullis / HAProxy+jwt req/s", ratio("portcullis-unique", "haproxy+jwt-unique"), ">= 1.3", lambda x: x >= 1.3),
    ("h2c: Portcullis / HAProxy plain req/s", ratio("portcullis-h2", "haproxy-h2"), ">= 1.0", lambda x: x >= 1.0),
    ("repeated token, 100,000 revocations / none: req/s (issue 7)", ratio("portcullis-revocation", "portcullis"), ">= 0.95", lambda x: x >= 0.95),
]
info = [
    ("Portcullis / nginx CPU per request", ratio("portcullis", "nginx", "cpu_us_per_req")),
    ("100,000 revocations / none: CPU per request", ratio("portcullis-revocation", "portcullis", "cpu_us_per_req")),
    ("Portcullis / HAProxy+jwt CPU per request", ratio("portcullis", "haproxy+jwt", "cpu_us_per_req")),
    ("unique tokens: Portcullis / HAProxy+jwt CPU per request", ratio("portcullis-unique", "haproxy+jwt-unique", "cpu_us_per_req")),
]
def result(name):
    p = os.path.join(run, name)
    if not os.path.exists(p):
        return {}
    m = re.search(r"^RESULT (.*)$", open(p).read(), re.M)
    return {k: float(v) for k, v in (kv.split("=") for kv in m.group(1).split())} if m else {}
start, mem = result("startup.out"), result("memory.out")
mib = lambda kib: kib / 1024
if start:
    checks.append(("RSS idle, one provider, ten routes (MiB)", mib(start["idle_rss_kib"]), "<= 20", lambda x: x <= 20))
if mem:
    checks.append((f"RSS holding {int(mem['conns']):,} idle keep-alive connections (MiB)", mib(mem["conns_rss_kib"]), "<= 150", lambda x: x <= 150))
    checks.append((f"RSS growth over {int(mem['tokens']):,} unique tokens, cache filled (MiB)", mib(mem["tokens_rss_kib"] - mem["before_tokens_rss_kib"]), "<= 64", lambda x: x <= 64))
if start:
    checks.append(("first served request after /readyz (ms)", start["ready_to_first_ms"], "<= 100", lambda x: x <= 100))
w("| target (issues 6 and 7) | measured | target | |")
w("|---|---:|---:|---|")
for name, value, target, ok in checks:
    verdict = "n/a" if value != value else ("PASS" if ok(value) else "FAIL")
    w(f"| {name} | {value:.2f} | {target} | {verdict} |")
w("")
w("| also measured | |")
w("|---|---:|")
for name, value in info:
    w(f"| {name} | {value:.2f} |")
if start:
    w(f"| start to first served 200, key fetch included (ms) | {start['start_to_first_ms']:.1f} |")
    w(f"| start to /readyz 200 (ms) | {start['start_to_ready_ms']:.1f} |")
if mem:
    w(f"| RSS idle before the connections / before the tokens (MiB) | {mib(mem['idle_rss_kib']):.1f} / {mib(mem['before_tokens_rss_kib']):.1f} |")
    w(f"| RSS after {int(mem['tokens']):,} unique tokens (MiB; sent in {mem['tokens_seconds']:.0f} s, a process of its own) | {mib(mem['tokens_rss_kib']):.1f} |")
elif not memory:
    w("| memory with 10,000 connections / 100,000 cached tokens | not run (--memory) |")
wraps = sum(d["wraps"] for d in med.values())
if wraps:
    w("")
    w(f"WARNING: the unique-token runs used up their token file {wraps} time(s) and started it again: raise UNIQUE_RATE.")
print("\n".join(out))
EOF
say "# results: $RUN/table.md (per run: $RUN/results.tsv, raw output: $RUN/logs/)"
