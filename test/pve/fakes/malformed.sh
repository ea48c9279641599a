#!/bin/sh
# Fake pve-call: greets, then writes a line that is not JSON.
cat >/dev/null
echo '{"guestbackup":"0.0.0-fake","protocol":1}'
echo 'this is not json {'
sleep 5
