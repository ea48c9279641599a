#!/bin/sh
# Fake pve-call: greets, leaves a grandchild holding stdout and stderr open, and exits 3. The
# shim must report the death at once instead of waiting for the pipes' end.
echo '{"guestbackup":"0.0.0-fake","protocol":1}'
echo "orphaned" >&2
sleep 30 &
echo $! > "$FAKE_PIDFILE"
exit 3
