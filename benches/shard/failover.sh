#!/bin/bash
# Failover time: SIGKILL the leader, time until the first admit on the new leader. N rounds.
# Usage (from the repository root, after cargo build --release, with etcd at $ETCD):
#   ETCD=http://127.0.0.1:2379 bash benches/shard/failover.sh [ROUNDS]
W=$(mktemp -d); S=${STILE:-$PWD/target/release/stile}; cd "$W"; N=${1:-5}; ETCD=${ETCD:-http://127.0.0.1:2379}
mkdir -p fo; $S certs init --dir fo/tls >/dev/null
for n in n1 n2; do $S certs issue-node --dir fo/tls --san 127.0.0.1 --name $n >/dev/null; done
$S certs issue-admin admin --dir fo/tls >/dev/null; $S certs issue-gate 1 --provider 1 --dir fo/tls >/dev/null
E="--etcd $ETCD --cluster fo$RANDOM --shard s1 --lease 3s"
start() { (STILE_LOG=warn $S node --data fo/$1 --tls fo/tls --name $1 --listen 127.0.0.1:$2 $E >> fo/$1.log 2>&1 &); }
start n1 26101; sleep 1.5; start n2 26102; sleep 3
$S mint --data fo --node 127.0.0.1:26101,127.0.0.1:26102 --count $((N+5)) > fo/codes.txt
mapfile -t C < fo/codes.txt
for i in $(seq 1 $N); do
  L=$($S cluster status --etcd $ETCD --cluster $(echo $E | awk '{print $4}') --json | python3 -c "import sys,json; print(json.loads(sys.stdin.readline())['leader'])")
  P=$(pgrep -f "name $L ")
  T0=$(date +%s.%N); kill -9 $P
  $S check --data fo --node 127.0.0.1:26101,127.0.0.1:26102 --timeout 30s ${C[$i]} > /dev/null 2>&1
  T1=$(date +%s.%N); echo "failover $i: leader $L killed, next admit after $(python3 -c "print(round($T1-$T0,2))") s"
  if [ $L = n1 ]; then start n1 26101; else start n2 26102; fi; sleep 6
done
pkill -f -- "--listen 127.0.0.1:2610[12]"
