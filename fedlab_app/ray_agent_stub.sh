#!/bin/sh
# Stands in for one of the two agents that a lean private Ray's raylet starts (fedlab_app/ray_start.py,
# `stub_agents`): writes -1, "service not in use", to the agent's port files, which the raylet waits for, then
# lives as long as the raylet, whose fate the agent shares.
#
# usage: ray_agent_stub.sh PORT_NAME[,PORT_NAME...] AGENT_ARGS...
#   of the agent's own arguments, --node-id= and --session-dir= name the files: SESSION_DIR/PORT_NAME_NODE_ID
names=$1
shift
node=
dir=
for arg in "$@"; do
    case $arg in
        --node-id=*) node=${arg#--node-id=} ;;
        --session-dir=*) dir=${arg#--session-dir=} ;;
    esac
done
if [ -z "$node" ] || [ -z "$dir" ]; then
    echo "ray_agent_stub.sh: no --node-id= or --session-dir= among: $*" >&2
    exit 2
fi
IFS=,
for name in $names; do
    # written whole, then renamed: the raylet reads a file as soon as it exists
    printf '%s' -1 > "$dir/.$name.$$" && mv -f "$dir/.$name.$$" "$dir/${name}_$node" || exit 1
done
raylet=$PPID
while kill -0 "$raylet" 2>/dev/null; do
    # a raylet that died but is not yet reaped (a zombie, state Z in Linux's /proc) has ended too
    stat=
    read -r stat < "/proc/$raylet/stat" 2>/dev/null
    case $stat in *") Z "*) exit 0 ;; esac
    sleep 1
done
