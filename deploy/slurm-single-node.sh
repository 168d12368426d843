#!/bin/sh
# A single-node SLURM (Debian's slurm-wlm + munge) in one folder, to try
# deploy/slurm_dask_jobqueue.py without a cluster: munged, slurmctld and slurmd started by
# hand, their configuration, keys, sockets, state and logs all under DIR (nothing in /etc).
#
#   sudo apt-get install -y --no-install-recommends slurm-wlm munge   # once
#   sudo deploy/slurm-single-node.sh start /tmp/slurm                 # about 10 s
#   export SLURM_CONF=/tmp/slurm/slurm.conf                          # for sbatch, squeue, ...
#   python deploy/slurm_dask_jobqueue.py slides --out outputs --gpus 0 --cores 2 --memory 2GiB
#   sudo deploy/slurm-single-node.sh stop /tmp/slurm
#
# Runs as root (slurmd must); munged runs as the `munge` user the package creates.
# slurmctld and slurmd listen on loopback only (127.0.0.1:6817 and :6818): a SLURM that takes
# jobs from the network runs any code it is sent, next to patient data. To serve other
# machines, name this machine's address: SLURM_LISTEN_ADDRESS=10.0.0.5 deploy/... start DIR
# (then secure the network as for any SLURM: munge keys, a firewall).
set -eu
action=${1:?usage: slurm-single-node.sh start|stop DIR}
dir=${2:?usage: slurm-single-node.sh start|stop DIR}

stop() {
    for name in slurmd slurmctld munged; do
        if [ -f "$dir/$name.pid" ]; then
            kill "$(cat "$dir/$name.pid")" 2>/dev/null || true
            rm -f "$dir/$name.pid"
        fi
    done
}

if [ "$action" = stop ]; then
    stop
    exit 0
fi
[ "$action" = start ] || { echo "error: $action: give start or stop" >&2; exit 2; }
for tool in munged slurmctld slurmd sbatch; do
    command -v "$tool" >/dev/null || {
        echo "error: $tool is not installed; apt-get install slurm-wlm munge" >&2; exit 1; }
done

host=$(hostname -s)
addr=${SLURM_LISTEN_ADDRESS:-127.0.0.1}
# the controller's name: `localhost` for loopback (slurmctld accepts it as its own name and
# binds to what it resolves to), else this host at the given address
if [ "$addr" = 127.0.0.1 ]; then controller="localhost($addr)"; else controller="$host($addr)"; fi
cpus=$(nproc)
mem_mb=$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)
mkdir -p "$dir/munge" "$dir/munge-run" "$dir/ctld" "$dir/spool"
chown munge:munge "$dir/munge" "$dir/munge-run" && chmod 700 "$dir/munge" && chmod 755 "$dir/munge-run"
if [ ! -f "$dir/munge/munge.key" ]; then
    dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 2>/dev/null
    chown munge:munge "$dir/munge/munge.key" && chmod 400 "$dir/munge/munge.key"
fi
runuser -u munge -- munged --key-file "$dir/munge/munge.key" \
    --socket "$dir/munge-run/munge.socket" --pid-file "$dir/munge-run/munged.pid" \
    --log-file "$dir/munge/munged.log" --seed-file "$dir/munge/munged.seed"
cp "$dir/munge-run/munged.pid" "$dir/munged.pid"

cat > "$dir/slurm.conf" <<CONF
ClusterName=single
SlurmctldHost=$controller
# bind to the configured addresses, not to every interface (INADDR_ANY)
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
SlurmUser=root
AuthType=auth/munge
AuthInfo=socket=$dir/munge-run/munge.socket
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
ReturnToService=2
SchedulerType=sched/backfill
StateSaveLocation=$dir/ctld
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
NodeName=$host NodeAddr=$addr NodeHostname=$host CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
export SLURM_CONF="$dir/slurm.conf"
slurmctld -f "$SLURM_CONF"
slurmd -f "$SLURM_CONF"
for _ in $(seq 60); do
    if sinfo -h -o %t 2>/dev/null | grep -q idle; then
        echo "SLURM_CONF=$SLURM_CONF"
        exit 0
    fi
    sleep 1
done
echo "error: the node did not become idle in 60 s; see $dir/slurmctld.log and $dir/slurmd.log" >&2
stop
exit 1
