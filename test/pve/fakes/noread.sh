#!/bin/sh
# Fake pve-call: never reads its stdin and never answers (a large request must not block the
# shim's timeout).
exec sleep 1000
