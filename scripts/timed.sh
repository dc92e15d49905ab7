#!/usr/bin/env bash
# Run a command and report how long it took: scripts/timed.sh NAME COMMAND...
name="$1"
shift
start=$(date +%s)
echo "=== $name: started"
"$@"
rc=$?
echo "=== $name: $([ $rc = 0 ] && echo passed || echo "FAILED (exit $rc)") in $(($(date +%s) - start))s"
exit $rc
