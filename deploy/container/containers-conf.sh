#!/bin/sh
# Print a containers.conf(5) that lets podman 4.3 (Debian 12) run containers on hosts like the test
# machine: cgroup v1 ("hybrid"), where crun fails with "cgroups in hybrid mode not supported", and
# hard rlimits below podman's defaults, where runc fails with "error setting rlimit type 7"
# (nofile) or "type 6" (nproc). Use it as:
#   sh deploy/container/containers-conf.sh > containers.conf && export CONTAINERS_CONF=$PWD/containers.conf
set -eu

# The hard limit of this process (field 4 of /proc/self/limits, "Max open files  SOFT  HARD  files").
hard() { awk -v name="$1" 'index($0, name) == 1 { print ($4 == "unlimited") ? -1 : $4 }' /proc/self/limits; }
nofile=$(hard "Max open files")
# podman 4.3 itself lowers its nproc limit to 32768 before it starts conmon: no container gets more.
nproc=$(hard "Max processes")
if [ "$nproc" = -1 ] || [ "$nproc" -gt 32768 ]; then nproc=32768; fi
cat <<CONF
[engine]
runtime = "runc"

[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]
CONF
