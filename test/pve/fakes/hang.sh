#!/bin/sh
# Fake pve-call: greets, then never answers (its pid goes to $FAKE_PIDFILE so the test can check
# it was killed). exec: the pid the shim sees is the sleeping process itself.
echo '{"guestbackup":"0.0.0-fake","protocol":1}'
echo $$ > "$FAKE_PIDFILE"
exec sleep 1000
