#!/usr/bin/env bash
# Start a one-node SLURM cluster on this machine for the tests of
# `--cluster slurm` (tests/test_cluster.py).
#
# Debian/Ubuntu only, as root: installs munge and SLURM from the distribution
# (slurmctld, slurmd, slurm-client), writes /etc/slurm/slurm.conf for a single
# node called "localhost" with this machine's cores and memory, starts munged,
# slurmctld and slurmd as background daemons (logs in $SLURM_CI_DIR, default
# /tmp/isoview-slurm) and waits until `sinfo` reports the node idle.
#
# Exit status: 0 when SLURM accepts jobs (already running counts too), 1 when
# it could not be set up; the reason is printed. The script itself never
# decides whether that failure matters: .ci/run sets ISOVIEW_SLURM=1 for the
# tests after a success, treats a failure as fatal only when CI=true, and
# otherwise lets the SLURM test skip with the reason.
#
# Running it twice is harmless: a node that already answers `sinfo` as idle is
# reused, and daemons this script started earlier are restarted.
set -uo pipefail

LOGDIR="${SLURM_CI_DIR:-/tmp/isoview-slurm}"
CONF=/etc/slurm/slurm.conf
MARK="# written by isoview-dask .ci/slurm.sh"

say() { echo "slurm.sh: $*" >&2; }
fail() { say "SLURM NOT AVAILABLE: $*"; exit 1; }

node_state() { sinfo -h -N -n localhost -o '%t' 2>/dev/null | head -n1; }

node_idle() {
    local state
    state="$(node_state)"
    [[ "$state" == idle* || "$state" == mix* ]]
}

wait_for() {  # wait_for SECONDS COMMAND...: poll until COMMAND succeeds
    local limit=$1; shift
    local waited=0
    until "$@"; do
        (( waited >= limit )) && return 1
        sleep 1; waited=$((waited + 1))
    done
}

if command -v sinfo >/dev/null 2>&1 && node_idle; then
    say "reusing the running SLURM cluster:"; sinfo >&2
    exit 0
fi

[[ "$(id -u)" == 0 ]] || fail "needs root (installs packages, starts daemons)"
command -v apt-get >/dev/null 2>&1 || fail "needs apt-get (Debian or Ubuntu)"

# --- packages -------------------------------------------------------------
PACKAGES=(munge slurmctld slurmd slurm-client)
missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if (( ${#missing[@]} )); then
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # Package lists are refreshed only when the install fails without it.
    apt_install() { apt-get install -y -q --no-install-recommends "${missing[@]}" >"$LOGDIR/apt.log" 2>&1; }
    mkdir -p "$LOGDIR"
    if ! apt_install; then
        say "refreshing package lists (apt-get update)"
        apt-get update -q >>"$LOGDIR/apt.log" 2>&1 || true
        apt_install || { tail -n 20 "$LOGDIR/apt.log" >&2; fail "apt-get install failed (log: $LOGDIR/apt.log)"; }
    fi
fi
for cmd in munged mungekey slurmctld slurmd sinfo sbatch; do
    command -v "$cmd" >/dev/null 2>&1 || [[ -x "/usr/sbin/$cmd" ]] || fail "$cmd missing after install"
done
export PATH="$PATH:/usr/sbin:/sbin"

# --- stop what an earlier run of this script started ------------------------
mkdir -p "$LOGDIR"
for pidfile in "$LOGDIR/slurmd.pid" "$LOGDIR/slurmctld.pid" "$LOGDIR/munge/munged.pid"; do
    name="$(basename "$pidfile" .pid)"
    if [[ -f "$pidfile" ]]; then
        pid="$(cat "$pidfile")"
        if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
            say "stopping $name (pid $pid) from an earlier run"
            kill "$pid" 2>/dev/null
            wait_for 10 bash -c "! kill -0 $pid 2>/dev/null" || kill -9 "$pid" 2>/dev/null
        fi
        rm -f "$pidfile"
    fi
done

# --- munge ------------------------------------------------------------------
# The Debian package normally creates the key on install; make one if not.
if [[ ! -s /etc/munge/munge.key ]]; then
    say "creating the munge key"
    mungekey --create --keyfile=/etc/munge/munge.key 2>/dev/null ||
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none ||
        fail "cannot create /etc/munge/munge.key"
fi
MUNGE_USER=munge
id "$MUNGE_USER" >/dev/null 2>&1 || MUNGE_USER=root
mkdir -p /run/munge /var/lib/munge "$LOGDIR/munge"
chown "$MUNGE_USER:$MUNGE_USER" /etc/munge/munge.key /run/munge /var/lib/munge "$LOGDIR/munge"
chmod 0400 /etc/munge/munge.key
chmod 0755 /run/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    say "starting munged"
    MUNGED=(munged --log-file="$LOGDIR/munge/munged.log" --pid-file="$LOGDIR/munge/munged.pid")
    if [[ "$MUNGE_USER" == root ]]; then
        "${MUNGED[@]}" --force
    else
        runuser -u "$MUNGE_USER" -- "${MUNGED[@]}"
    fi
    wait_for 15 bash -c 'munge -n | unmunge >/dev/null 2>&1' ||
        { tail -n 20 "$LOGDIR/munge/munged.log" >&2; fail "munged does not answer (log: $LOGDIR/munge/munged.log)"; }
fi

# --- slurm.conf ---------------------------------------------------------------
CPUS="$(nproc)"
# RealMemory as slurmd itself measures it, so the node is never drained for
# "low RealMemory"; fall back to /proc/meminfo.
MEMORY="$(slurmd -C 2>/dev/null | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' | head -n1)"
[[ -n "$MEMORY" ]] || MEMORY="$(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo)"
if [[ -f "$CONF" ]] && ! grep -qF "$MARK" "$CONF"; then
    cp "$CONF" "$CONF.before-isoview-ci"
    say "kept the previous $CONF as $CONF.before-isoview-ci"
fi
mkdir -p /etc/slurm "$LOGDIR/state" "$LOGDIR/spool"
cat >"$CONF" <<EOF
$MARK
# One node, root daemons, no cgroups and no accounting: a test cluster.
ClusterName=isoview-ci
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
StateSaveLocation=$LOGDIR/state
SlurmdSpoolDir=$LOGDIR/spool
SlurmctldPidFile=$LOGDIR/slurmctld.pid
SlurmdPidFile=$LOGDIR/slurmd.pid
SlurmctldLogFile=$LOGDIR/slurmctld.log
SlurmdLogFile=$LOGDIR/slurmd.log
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
MinJobAge=60
NodeName=localhost NodeHostname=localhost CPUs=$CPUS RealMemory=$MEMORY State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
say "wrote $CONF (node localhost: CPUs=$CPUS RealMemory=$MEMORY MB)"

# --- daemons --------------------------------------------------------------------
say "starting slurmctld and slurmd (logs in $LOGDIR)"
slurmctld -c -f "$CONF" || { tail -n 20 "$LOGDIR/slurmctld.log" >&2; fail "slurmctld did not start"; }
wait_for 30 scontrol ping >/dev/null 2>&1 ||
    { tail -n 20 "$LOGDIR/slurmctld.log" >&2; fail "slurmctld does not answer (log: $LOGDIR/slurmctld.log)"; }
slurmd -N localhost -f "$CONF" || { tail -n 20 "$LOGDIR/slurmd.log" >&2; fail "slurmd did not start"; }
if ! wait_for 60 node_idle; then
    # A node left DOWN/DRAINED by an earlier configuration: resume it once.
    scontrol update NodeName=localhost State=RESUME >/dev/null 2>&1
    wait_for 20 node_idle || {
        sinfo -N -l >&2; tail -n 20 "$LOGDIR/slurmd.log" >&2
        fail "node localhost is '$(node_state)', not idle (logs: $LOGDIR)"
    }
fi

# --- a job must really run --------------------------------------------------------
probe="$(timeout 60 srun -N1 -n1 -t 1 bash -c 'echo "job $SLURM_JOB_ID on $(hostname)"' 2>&1)" ||
    fail "a test job did not run: $probe"
say "$probe"
sinfo >&2
say "SLURM is ready"
exit 0
