#!/bin/sh
# PID 1 of the arm64 guest `cargo xtask vm-test-arm64` boots (busybox sh). Mounts
# what the agent reads, runs it as root, checks that it counts CPU time with eBPF and
# that a busy loop's CPU seconds on /metrics match the kernel's own figure for it
# (/proc/PID/schedstat), prints one status line the host reads, and powers off.
/bin/busybox --install -s /bin
export PATH=/bin:/usr/bin

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
mount -t bpf bpf /sys/fs/bpf
mount -t tracefs tracefs /sys/kernel/tracing
mount -t debugfs debugfs /sys/kernel/debug
ip link set lo up

failures=0
fail() {
    echo "vm-check: FAIL: $*"
    failures=$((failures + 1))
}
finish() {
    echo "vm-check: exit status $failures"
    poweroff -f
}

echo "vm-check: kernel $(uname -r) $(uname -m), $(grep -c ^processor /proc/cpuinfo) CPUs"

port=3000
# Processes are listed afresh for every scrape, so a reading is not an older snapshot.
# Debug for the agent's own lines: its eBPF error counters and reads, printed whole
# when a check fails.
RUST_LOG=socktop_agent=debug SOCKTOP_AGENT_PROCESSES_TTL_MS=0 socktop_agent --bind 127.0.0.1 --port $port >/tmp/agent.log 2>&1 &
agent=$!

healthz=
tries=0
while [ $tries -lt 240 ]; do
    healthz=$(wget -q -O - http://127.0.0.1:$port/healthz 2>/dev/null) && break
    kill -0 $agent 2>/dev/null || break
    sleep 0.5
    tries=$((tries + 1))
done
echo "vm-check: agent log:"
sed 's/^/    /' /tmp/agent.log
if [ -z "$healthz" ]; then
    fail "the agent did not answer /healthz"
    finish
fi
echo "vm-check: /healthz: $healthz"
case "$healthz" in
*'"cpu_source":"ebpf"'*) echo "vm-check: ok: cpu source ebpf" ;;
*) fail "cpu source is not ebpf" ;;
esac
if grep -q "listed from /proc" /tmp/agent.log; then
    fail "processes are listed from /proc: $(grep "listed from /proc" /tmp/agent.log)"
fi

# A busy loop with a name of its own (its comm is written by itself).
sh -c 'printf spin >/proc/self/comm; while :; do :; done' &
spin=$!
sleep 5

# The first field of schedstat: nanoseconds on CPU, from the scheduler.
schedstat_ns() { cut -d' ' -f1 "/proc/$spin/schedstat"; }
# The loop's seconds on /metrics (its comm's total: it is the only `spin`).
metrics_seconds() {
    wget -q -O - http://127.0.0.1:$port/metrics | tee /tmp/metrics |
        awk 'index($0, "socktop_comm_cpu_seconds_total{comm=\"spin\"} ") == 1 { print $2 }'
}

# While it runs: the reading must fall between the kernel's figures just before
# and just after, give or take 5%.
before=$(schedstat_ns)
running=$(metrics_seconds)
after=$(schedstat_ns)
echo "vm-check: running: schedstat ${before} ns before, ${after} ns after; /metrics ${running:-nothing} s"
if [ -z "$running" ] || ! awk -v m="$running" -v b="$before" -v a="$after" \
    'BEGIN { exit !(m * 1e9 >= b * 0.95 && m * 1e9 <= a * 1.05) }'; then
    fail "the running loop's CPU seconds on /metrics are not within 5% of its schedstat"
fi

# Stopped: both figures are final, so they must agree within 5%.
kill -STOP $spin
sleep 1
stopped_ns=$(schedstat_ns)
stopped=$(metrics_seconds)
ratio=$(awk -v m="$stopped" -v s="$stopped_ns" 'BEGIN { if (s > 0) printf "%.5f", m * 1e9 / s }')
echo "vm-check: stopped: schedstat ${stopped_ns} ns, /metrics ${stopped:-nothing} s, ratio ${ratio:-none}"
if [ -z "$stopped" ] || ! awk -v r="$ratio" 'BEGIN { exit !(r >= 0.95 && r <= 1.05) }'; then
    fail "the stopped loop's CPU seconds on /metrics are not within 5% of its schedstat"
    echo "vm-check: the lines of /metrics that name spin, and the loop's comm ($(cat /proc/$spin/comm)):"
    grep spin /tmp/metrics
    echo "vm-check: the loop's ids and switches:"
    grep -E '^(Tgid|Pid|PPid|voluntary_ctxt_switches|nonvoluntary_ctxt_switches|Cpus_allowed_list)' "/proc/$spin/status"
    echo "vm-check: the agent's whole log:"
    sed 's/^/    /' /tmp/agent.log
else
    echo "vm-check: ok: CPU seconds within 5% of schedstat"
fi

kill -KILL $spin
kill -TERM $agent
wait $agent
echo "vm-check: agent log after the checks:"
sed 's/^/    /' /tmp/agent.log | tail -n 5
finish
