#!/bin/sh
# Fake pve-call: dies before any reply, with a message on stderr.
echo "starting" >&2
echo "boom" >&2
exit 1
