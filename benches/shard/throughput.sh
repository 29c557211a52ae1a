#!/bin/bash
# Replicated durable throughput vs a lone durable node, same invocation, 64 x 16, 3 rounds.
# Usage (from the repository root, after cargo build --release): bash benches/shard/throughput.sh
set -e
W=$(mktemp -d); cd "$W"; S=${STILE:-$OLDPWD/target/release/stile}
rm -rf lone p s data; mkdir -p data
$S certs init --dir data/tls >/dev/null; $S certs issue-node --dir data/tls --san 127.0.0.1 >/dev/null
for n in n1 n2; do $S certs issue-node --dir data/tls --san 127.0.0.1 --name $n >/dev/null; done
$S certs issue-admin admin --dir data/tls >/dev/null
(STILE_LOG=warn $S node --data lone --tls data/tls --listen 127.0.0.1:26001 --sync always > lone.log 2>&1 &)
(STILE_LOG=warn $S node --data p --tls data/tls --name n1 --listen 127.0.0.1:26002 --sync always --metrics 127.0.0.1:26012 > p.log 2>&1 &)
sleep 1
(STILE_LOG=warn $S node --data s --tls data/tls --name n2 --listen 127.0.0.1:26003 --sync always --standby-of 127.0.0.1:26002 > s.log 2>&1 &)
for i in $(seq 1 100); do curl -s http://127.0.0.1:26012/metrics | grep -q "^stile_node_sync_standby 1" && break; sleep 0.1; done
curl -s http://127.0.0.1:26012/metrics | grep "^stile_node_sync_standby"
$S loadtest --scenario stadium --compare quic://127.0.0.1:26002,quic://127.0.0.1:26001 --gates 64 --inflight 16 --duration 10s --rounds 3 --data data 2>&1 | tail -25
curl -s http://127.0.0.1:26012/metrics | grep "^stile_node_sync_standby"
# The standby's lag over the primary's rounds: from each batch's sending to its acknowledgement.
curl -s http://127.0.0.1:26012/metrics | python3 -c '
import sys
b = [(float(l.split("le=\"")[1].split("\"")[0].replace("+Inf", "inf")), float(l.split()[-1]))
     for l in sys.stdin if l.startswith("stile_node_standby_ack_duration_seconds_bucket")]
total = b[-1][1]
for q in (0.5, 0.99, 0.999):
    le = next(le for le, n in b if n >= q * total)
    print(f"standby ack p{q*100:g} <= {le*1000:g} ms ({int(total)} batches)")
'
pkill -f -- "--listen 127.0.0.1:2600[123]"
