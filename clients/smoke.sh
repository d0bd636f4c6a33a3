#!/usr/bin/env bash
# Smoke test of a running anogan-inspect server with grpcurl (reflection, health, RPCs).
#
#   clients/smoke.sh TARGET                          e.g. clients/smoke.sh localhost:50051
#   clients/smoke.sh --start-server BUNDLE [ARGS...]  start `anogan-serve --bundle BUNDLE
#                                                    --port 0 ARGS...`, check it, drain it
#                                                    (SIGTERM) and check that it exits 0
#
# Needs `grpcurl` on PATH, and `python3` (or `python`) only to make a small PNG; with
# --start-server also `anogan-serve` (`make smoke` puts .venv/bin first on PATH).
# Environment: SMOKE_CONNECT_TIMEOUT (s, default 5), SMOKE_MAX_TIME (s per call, default 120),
# SMOKE_START_TIMEOUT (s to wait for the server's port, default 120), SMOKE_DRAIN_TIMEOUT
# (s to wait for the drained server to exit, default 90).
# Every check prints `ok - WHAT` or `FAIL - WHAT: OUTPUT`; the exit status is 0 only when all
# of them passed (1 when a check failed, 2 for a usage or setup error).
set -euo pipefail

SERVICE="anogan.v1.InspectionService"
CONNECT_TIMEOUT="${SMOKE_CONNECT_TIMEOUT:-5}"
MAX_TIME="${SMOKE_MAX_TIME:-120}"
START_TIMEOUT="${SMOKE_START_TIMEOUT:-120}"
DRAIN_TIMEOUT="${SMOKE_DRAIN_TIMEOUT:-90}"

usage() {
  echo "usage: $0 TARGET | $0 --start-server BUNDLE [ANOGAN_SERVE_ARGS...]" >&2
  exit 2
}

die() {
  echo "smoke: error: $*" >&2
  exit 2
}

passed=0
failed=0

ok() {
  echo "ok - $1"
  passed=$((passed + 1))
}

fail() {
  echo "FAIL - $1: $2"
  failed=$((failed + 1))
}

# --- arguments -------------------------------------------------------------------------
[[ $# -ge 1 ]] || usage
target=""
bundle=""
server_args=()
case "$1" in
  -h | --help) usage ;;
  --start-server)
    [[ $# -ge 2 ]] || usage
    bundle="$2"
    server_args=("${@:3}")
    ;;
  -*) usage ;;
  *)
    [[ $# -eq 1 ]] || usage
    target="$1"
    ;;
esac

command -v grpcurl >/dev/null 2>&1 \
  || die "grpcurl not found on PATH (it is in .venv/bin after 'make install')"
python_bin=""
for candidate in python3 python; do
  if command -v "$candidate" >/dev/null 2>&1; then
    python_bin="$candidate"
    break
  fi
done
[[ -n "$python_bin" ]] || die "neither python3 nor python found on PATH (needed to make a PNG)"

# --- optional server -------------------------------------------------------------------
server_pid=""
server_log=""
port_file=""

cleanup() {
  local status=$?
  if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2>/dev/null; then
    kill -KILL "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  if [[ $status -ne 0 && -n "$server_log" && -f "$server_log" ]]; then
    echo "--- server log ($server_log) ---" >&2
    cat "$server_log" >&2 || true
    echo "--- end of server log ---" >&2
  fi
  [[ -z "$port_file" ]] || rm -f "$port_file"
  [[ -z "$server_log" ]] || rm -f "$server_log"
  exit "$status"
}
trap cleanup EXIT

if [[ -n "$bundle" ]]; then
  [[ -e "$bundle" ]] || die "bundle not found: $bundle"
  command -v anogan-serve >/dev/null 2>&1 \
    || die "anogan-serve not found on PATH (it is in .venv/bin after 'make install')"
  port_file="$(mktemp "${TMPDIR:-/tmp}/anogan-smoke-port.XXXXXX")"
  server_log="$(mktemp "${TMPDIR:-/tmp}/anogan-smoke-server.XXXXXX")"
  anogan-serve --bundle "$bundle" --port 0 --port-file "$port_file" "${server_args[@]}" \
    >"$server_log" 2>&1 &
  server_pid=$!
  echo "smoke: started anogan-serve (pid $server_pid) for $bundle"
  # The server writes "PORT\n" once listening; wait for the whole line.
  deadline=$((SECONDS + START_TIMEOUT))
  while :; do
    content="$(
      cat "$port_file"
      echo x
    )"
    content="${content%x}"
    if [[ "$content" =~ ^[0-9]+$'\n'$ ]]; then
      break
    fi
    if ! kill -0 "$server_pid" 2>/dev/null; then
      server_status=0
      wait "$server_pid" || server_status=$?
      server_pid=""
      echo "FAIL - server start: anogan-serve exited with status $server_status before listening"
      exit 1
    fi
    if ((SECONDS >= deadline)); then
      echo "FAIL - server start: no port in $port_file after ${START_TIMEOUT} s"
      exit 1
    fi
    sleep 0.2
  done
  # The server's --host, if given; every interface ([::], 0.0.0.0) is reached at localhost
  host=localhost
  for ((i = 0; i < ${#server_args[@]} - 1; i++)); do
    [[ "${server_args[i]}" == "--host" ]] && host="${server_args[i + 1]}"
  done
  case "$host" in "[::]" | "::" | "0.0.0.0" | "") host=localhost ;; esac
  target="${host}:${content%$'\n'}"
  ok "server started and listening on $target"
fi

echo "smoke: checking $target"

grpc() {
  grpcurl -plaintext -connect-timeout "$CONNECT_TIMEOUT" -max-time "$MAX_TIME" "$@"
}

# --- a 28×28 gray digit-like PNG (a "7"), base64, made with the standard library only ---
png_b64="$("$python_bin" - <<'EOF'
import base64, struct, sys, zlib

W = H = 28
rows = []
for y in range(H):
    row = bytearray(W)
    for x in range(W):
        if 5 <= y <= 7 and 6 <= x <= 21:
            row[x] = 255  # the bar
        elif 8 <= y <= 23 and abs(x - (21 - (y - 8) * 9 // 15)) <= 1:
            row[x] = 255  # the stroke down to the left
    rows.append(b"\x00" + bytes(row))  # filter type 0 per scanline


def chunk(kind, data):
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


png = (b"\x89PNG\r\n\x1a\n"
       + chunk(b"IHDR", struct.pack(">IIBBBBB", W, H, 8, 0, 0, 0, 0))
       + chunk(b"IDAT", zlib.compress(b"".join(rows)))
       + chunk(b"IEND", b""))
sys.stdout.write(base64.b64encode(png).decode("ascii"))
EOF
)" || die "$python_bin could not make the test PNG"

# --- checks ----------------------------------------------------------------------------
# (a) reflection lists the services; without this nothing else can work, so stop here.
what="list shows $SERVICE, grpc.health.v1.Health and reflection"
if out="$(grpc "$target" list 2>&1)" \
  && grep -qx "$SERVICE" <<<"$out" \
  && grep -qx "grpc.health.v1.Health" <<<"$out" \
  && grep -qE '^grpc\.reflection\.v1(alpha)?\.ServerReflection$' <<<"$out"; then
  ok "$what"
else
  fail "$what" "$out"
  echo "smoke: target $target unreachable or without reflection; remaining checks skipped"
  exit 1
fi

# (b) the service description has every RPC, and the contract's comments.
what="describe $SERVICE shows StreamInspect, Inspect, GetModel, ListModels and comments"
missing=""
if out="$(grpc "$target" describe "$SERVICE" 2>&1)"; then
  for rpc in StreamInspect Inspect GetModel ListModels; do
    grep -qE "rpc ${rpc} *\(" <<<"$out" || missing="$missing $rpc"
  done
  grep -q "^// Scores frames against the served models" <<<"$out" || missing="$missing comments"
else
  missing=" (describe failed)"
fi
if [[ -z "$missing" ]]; then ok "$what"; else fail "$what" "missing:$missing; $out"; fi

# (c) health of the service.
what="grpc.health.v1.Health/Check $SERVICE is SERVING"
if out="$(grpc -d "{\"service\":\"$SERVICE\"}" "$target" grpc.health.v1.Health/Check 2>&1)" \
  && grep -qE '"status": *"SERVING"' <<<"$out"; then
  ok "$what"
else
  fail "$what" "$out"
fi

# (d) at least one model, with a threshold.
what="ListModels returns a model with a threshold"
if out="$(grpc -emit-defaults "$target" "$SERVICE/ListModels" 2>&1)" \
  && grep -qE '"name": *"[^"]+"' <<<"$out" \
  && grep -qE '"threshold": *-?[0-9]' <<<"$out"; then
  ok "$what"
else
  fail "$what" "$out"
fi

# (e) a real frame gets a verdict and a score, and its frame id back.
what="Inspect on a 28x28 PNG returns a PASS/FAIL verdict, a score and the frame id"
request="{\"frame\":{\"frameId\":\"smoke-1\",\"sequence\":1,\"encoded\":{\"data\":\"$png_b64\"}}}"
if out="$(grpc -emit-defaults -d "$request" "$target" "$SERVICE/Inspect" 2>&1)" \
  && grep -qE '"verdict": *"VERDICT_(PASS|FAIL)"' <<<"$out" \
  && grep -qE '"score": *-?[0-9]' <<<"$out" \
  && grep -qE '"frame_?[iI]d": *"smoke-1"' <<<"$out"; then
  ok "$what ($(grep -oE 'VERDICT_(PASS|FAIL)' <<<"$out" | head -n 1))"
else
  fail "$what" "$out"
fi

# (f) a frame whose bytes are not an image fails the call with InvalidArgument.
what="Inspect on a frame that is not an image fails with InvalidArgument"
bad_request='{"frame":{"frameId":"smoke-bad","encoded":{"data":"bm90IGFuIGltYWdl"}}}'
if out="$(grpc -d "$bad_request" "$target" "$SERVICE/Inspect" 2>&1)"; then
  fail "$what" "the call succeeded: $out"
elif grep -qE 'Code: *InvalidArgument' <<<"$out"; then
  ok "$what"
else
  fail "$what" "$out"
fi

# --- drain -----------------------------------------------------------------------------
if [[ -n "$server_pid" ]]; then
  what="SIGTERM drains the server and it exits 0"
  kill -TERM "$server_pid"
  deadline=$((SECONDS + DRAIN_TIMEOUT))
  while kill -0 "$server_pid" 2>/dev/null && ((SECONDS < deadline)); do
    sleep 0.2
  done
  if kill -0 "$server_pid" 2>/dev/null; then
    fail "$what" "still running ${DRAIN_TIMEOUT} s after SIGTERM"
  else
    server_status=0
    wait "$server_pid" || server_status=$?
    server_pid=""
    if [[ $server_status -eq 0 ]]; then
      ok "$what"
    else
      fail "$what" "exit status $server_status; log: $(tail -n 20 "$server_log")"
    fi
  fi
fi

total=$((passed + failed))
if [[ $failed -ne 0 ]]; then
  echo "smoke: $failed of $total checks failed"
  exit 1
fi
echo "smoke: all $total checks passed"
