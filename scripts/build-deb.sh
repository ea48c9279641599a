#!/bin/bash
# Builds guestbackup_<version>_all.deb (version from package.json) with plain dpkg-deb, offline
# and reproducibly: mtimes from SOURCE_DATE_EPOCH (default: the last git commit), root:root,
# 0644 files and 0755 directories and executables, sorted members, single-threaded xz.
#
#   scripts/build-deb.sh [--out DIR]      (default DIR: dist-deb/ in the tree)
#
# Needs node_modules (`make npm`); the production dependencies come from `npm ci --omit=dev
# --offline` in a staging copy when the npm cache has them, else from node_modules following
# package-lock.json. Perl modules: every pve/PVE/**/*.pm (GUESTBACKUP_PVE_DIR overrides pve/)
# goes to /usr/share/perl5/PVE/... . DEB_MAINTAINER overrides the Maintainer field.
set -euo pipefail
umask 022
export LC_ALL=C TZ=UTC

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=$root/dist-deb
while [ $# -gt 0 ]; do
  case $1 in
    --out) out=$2; shift 2 ;;
    --out=*) out=${1#--out=}; shift ;;
    *) echo "usage: $0 [--out DIR]" >&2; exit 2 ;;
  esac
done
pve_dir=${GUESTBACKUP_PVE_DIR:-$root/pve}
warn() { echo "build-deb: warning: $*" >&2; }
die() { echo "build-deb: $*" >&2; exit 1; }

for tool in dpkg-deb node npm gzip md5sum; do
  command -v "$tool" >/dev/null || die "$tool not found"
done
[ -x "$root/node_modules/.bin/esbuild" ] || die "node_modules/.bin/esbuild missing: run 'make npm' first"

pkg_field() { node -e 'const p = require(process.argv[1]); process.stdout.write(String(p[process.argv[2]] ?? ""))' "$root/package.json" "$1"; }
version=$(pkg_field version)
license=$(pkg_field license)
[[ $version =~ ^[0-9][A-Za-z0-9.+~]*$ ]] || die "package.json version '$version' is not a Debian native version"

if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
  SOURCE_DATE_EPOCH=$(git -C "$root" log -1 --format=%ct 2>/dev/null) || {
    warn "not a git checkout: SOURCE_DATE_EPOCH is now, the build is not reproducible"
    SOURCE_DATE_EPOCH=$(date +%s)
  }
fi
export SOURCE_DATE_EPOCH
commit=$(git -C "$root" rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
maintainer=${DEB_MAINTAINER:-$(git -C "$root" log -1 --format='%an <%ae>' 2>/dev/null || true)}
[ -n "$maintainer" ] || die "no Maintainer: set DEB_MAINTAINER='Name <email>'"

work=$(mktemp -d "${TMPDIR:-/tmp}/guestbackup-deb.XXXXXX")
trap 'rm -rf "$work"' EXIT
stage=$work/root
lib=$stage/usr/lib/guestbackup
doc=$stage/usr/share/doc/guestbackup
mkdir -p "$lib" "$doc" "$stage/usr/bin" "$stage/usr/share/man/man1" "$stage/DEBIAN"

# --- compiled code: the CLI only, as the esbuild bundle bin/guestbackup runs in a checkout
# (scripts/bundle.ts: an entry and a chunk per command, the dependencies inside; its output
# depends only on the sources and the locked esbuild, so the package stays reproducible) ---
echo "build-deb: bundling the CLI into the package"
node --import "$root/node_modules/tsx/dist/esm/index.mjs" "$root/scripts/bundle.ts" \
  --outdir "$lib/dist/bundle"
entry=dist/bundle/bin.js
[ -f "$lib/$entry" ] || die "no CLI entry ($entry) after the build"
cp "$root/package.json" "$lib/package.json"

# --- production dependencies, no network. The bundle carries their code and loads nothing from
# here: they are kept as the packages whose code it holds, named with their licenses in the
# copyright file below ---
mkdir -p "$work/npm"
cp "$root/package.json" "$root/package-lock.json" "$work/npm/"
if (cd "$work/npm" && npm ci --omit=dev --ignore-scripts --offline --no-audit --no-fund \
  --loglevel=error >"$work/npm.log" 2>&1); then
  echo "build-deb: production dependencies installed from the npm cache"
else
  warn "npm ci --offline failed (see below); copying the production dependencies from node_modules"
  sed 's/^/  /' "$work/npm.log" >&2
  rm -rf "$work/npm/node_modules"
  # Every non-dev entry of the lockfile, copied from the installed tree at the same path.
  node - "$root" "$work/npm" <<'EOF'
const fs = require('node:fs')
const path = require('node:path')
const [src, dst] = process.argv.slice(2)
const lock = JSON.parse(fs.readFileSync(path.join(src, 'package-lock.json'), 'utf8'))
for (const [rel, meta] of Object.entries(lock.packages)) {
  if (rel === '' || meta.dev || meta.link) continue
  const from = path.join(src, rel)
  if (!fs.existsSync(from)) {
    if (meta.optional) continue
    throw new Error(`${rel} is in package-lock.json but not installed: run 'make npm'`)
  }
  const installed = JSON.parse(fs.readFileSync(path.join(from, 'package.json'), 'utf8')).version
  if (installed !== meta.version) throw new Error(`${rel} is ${installed}, the lockfile says ${meta.version}`)
  fs.cpSync(from, path.join(dst, rel), { recursive: true, dereference: true })
}
EOF
fi
rm -f "$work/npm/node_modules/.package-lock.json"
[ -d "$work/npm/node_modules" ] && cp -a "$work/npm/node_modules" "$lib/node_modules"
# What is never loaded at run time: docs, types, sources, tests, maps, dotfiles of the packages'
# own development. License files stay beside the code they cover.
if [ -d "$lib/node_modules" ]; then
  find "$lib/node_modules" -depth -mindepth 1 \( -type d \( -name test -o -name tests \
    -o -name __tests__ -o -name benchmarks -o -name bench -o -name docs -o -name example \
    -o -name examples -o -name '.*' \) -o -path '*/node_modules/zod/src' \) -exec rm -rf {} +
  find "$lib/node_modules" \( -type f -o -type l \) \( -name '*.ts' -o -name '*.cts' -o -name '*.mts' \
    -o -name '*.map' -o -name '*.sh' -o -name '*.yml' -o -name '*.yaml' -o -name 'tsconfig*.json' \
    -o -name '*.html' -o -name '*.gif' -o -name '*.png' -o -name '*.jpg' -o -name '*.svg' \
    -o -name '.*' -o \( -iname '*.md' -a ! -iname 'licen[cs]e*' \) \) -delete
  find "$lib/node_modules" -mindepth 1 -depth -type d -empty -delete
fi

# --- Perl modules of the Proxmox VE integration ---
pm_count=0
if [ -d "$pve_dir/PVE" ]; then
  while IFS= read -r -d '' pm; do
    rel=${pm#"$pve_dir"/}
    install -D -m 0644 "$pm" "$stage/usr/share/perl5/$rel"
    pm_count=$((pm_count + 1))
  done < <(find "$pve_dir/PVE" -type f -name '*.pm' -print0 | sort -z)
fi
if [ "$pm_count" -eq 0 ]; then
  warn "no Perl modules under $pve_dir/PVE: the package has no Proxmox VE storage plugin"
fi

# --- systemd units of unattended jobs (docs/jobs.md): templates, one timer enabled per job file
# by the administrator, so nothing is enabled or started on install ---
for unit in "$root"/systemd/*.service "$root"/systemd/*.timer; do
  [ -f "$unit" ] || continue
  install -D -m 0644 "$unit" "$stage/usr/lib/systemd/system/$(basename "$unit")"
done

# --- launcher ---
cat >"$stage/usr/bin/guestbackup" <<EOF
#!/bin/sh
# guestbackup launcher. /usr/bin/node is the nodejs package's (the Depends); a node of another
# version earlier in PATH, or pvedaemon's reduced PATH, cannot change which one runs.
# --max-semi-space-size=4: the young generation of V8's heap does not grow while data streams
# through (peak RSS; bin/guestbackup says why).
exec /usr/bin/node --max-semi-space-size=4 /usr/lib/guestbackup/$entry "\$@"
EOF

# --- man page guestbackup(1), from the CLI's commander definitions (scripts/man.ts; the same
# text as docs/guestbackup.1 with the date and version); gzip -n keeps no name or time ---
node "$lib/$entry" --version >/dev/null || die "the built CLI does not run: node $lib/$entry --version"
man_date=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%d)
node --import "$root/node_modules/tsx/dist/esm/index.mjs" "$root/scripts/man.ts" \
  --date "$man_date" --version "$version" --out "$stage/usr/share/man/man1/guestbackup.1"
gzip -9n "$stage/usr/share/man/man1/guestbackup.1"

# --- changelog (a native package: changelog.gz, not changelog.Debian.gz) ---
{
  printf 'guestbackup (%s) unstable; urgency=medium\n\n' "$version"
  printf '  * Built from the guestbackup sources at git commit %s.\n\n' "$commit"
  printf ' -- %s  %s\n' "$maintainer" "$(date -u -R -d "@$SOURCE_DATE_EPOCH")"
} >"$doc/changelog"
gzip -9n "$doc/changelog"

# --- copyright (DEP-5), with the bundled packages' notices and license texts ---
year=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y)
node - "$lib/node_modules" "$license" "$year" "$root" >"$doc/copyright" <<'EOF'
const fs = require('node:fs')
const path = require('node:path')
const [modules, license, year, root] = process.argv.slice(2)
const indent = (text) =>
  text
    .replace(/\r/g, '')
    .replace(/\n\s*\n(\s*\n)+/g, '\n\n')
    .trim()
    .split('\n')
    .map((l) => (l.trim() === '' ? ' .' : ` ${l.trimEnd()}`))
    .join('\n')
const out = [
  'Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/',
  'Upstream-Name: guestbackup',
  '',
  'Files: *',
  `Copyright: ${year} The guestbackup authors`,
  `License: ${license}`,
  '',
]
// A notice is a line "Copyright (c) 2011 Name", "Copyright © …", "Copyright Name" (not the
// license's own "copyright in it." or "COPYRIGHT HOLDERS"); one ending in ':' goes on with the
// following lines up to a blank one. The rest is the license text.
const splitNotices = (text) => {
  const notices = []
  const rest = []
  let prefix = null // "Copyright (c) 2011" of a notice ending in ':'
  for (const raw of text.replace(/\r/g, '').split('\n')) {
    const line = raw.trim()
    if (prefix !== null && line !== '') {
      if (notices.at(-1) === `${prefix}:`) notices.pop()
      notices.push(`${prefix} ${line}`)
      continue
    }
    prefix = null
    if (/^Copyright\s+(\([cC]\)|©|\d|[A-Z])/.test(line)) {
      notices.push(line)
      if (line.endsWith(':')) prefix = line.slice(0, -1)
    } else rest.push(raw)
  }
  return { notices, rest: rest.join('\n') }
}
const licenseTexts = new Map()
const packages = []
const walk = (dir) => {
  if (!fs.existsSync(dir)) return
  for (const name of fs.readdirSync(dir).sort()) {
    const p = path.join(dir, name)
    if (name.startsWith('@')) walk(p)
    else if (fs.existsSync(path.join(p, 'package.json'))) {
      packages.push(p)
      walk(path.join(p, 'node_modules'))
    }
  }
}
walk(modules)
for (const p of packages) {
  const meta = JSON.parse(fs.readFileSync(path.join(p, 'package.json'), 'utf8'))
  const spdx = typeof meta.license === 'string' ? meta.license : 'UNKNOWN'
  const file = fs.readdirSync(p).find((f) => /^(licen[cs]e|copying)/i.test(f))
  const text = file ? fs.readFileSync(path.join(p, file), 'utf8') : ''
  const { notices, rest } = splitNotices(text)
  const holders = notices.map((l) => l.replace(/^Copyright\s*(\([cC]\)|©)?\s*/, '').replace(/:$/, ''))
  if (holders.length === 0) {
    const author = typeof meta.author === 'string' ? meta.author : meta.author?.name
    holders.push(author ?? `the ${meta.name} authors`)
  }
  if (text && !licenseTexts.has(spdx)) {
    licenseTexts.set(spdx, rest)
  }
  out.push(`Files: usr/lib/guestbackup/${path.relative(path.dirname(modules), p)}/*`)
  out.push(`Copyright: ${holders.join('\n           ')}`)
  out.push(`License: ${spdx}`, '')
}
const own = ['LICENSE', 'COPYING', 'LICENSE.md', 'LICENSE.txt'].map((f) => path.join(root, f)).find((f) => fs.existsSync(f))
out.push(`License: ${license}`)
if (own) out.push(indent(fs.readFileSync(own, 'utf8')))
else {
  out.push(
    indent(`This program is free software: you can redistribute it and/or modify it under the terms
of the GNU Affero General Public License as published by the Free Software Foundation, either
version 3 of the License, or (at your option) any later version.

This program is distributed in the hope that it will be useful, but WITHOUT ANY WARRANTY;
without even the implied warranty of MERCHANTABILITY or FITNESS FOR A PARTICULAR PURPOSE. See the
GNU Affero General Public License for more details.

You should have received a copy of the GNU Affero General Public License along with this
program. If not, see <https://www.gnu.org/licenses/>.`),
  )
}
for (const [spdx, text] of [...licenseTexts].sort(([a], [b]) => a.localeCompare(b))) {
  if (spdx === license) continue
  out.push('', `License: ${spdx}`, indent(text))
}
process.stdout.write(out.join('\n') + '\n')
EOF

# The texts are in the copyright file now (as dh_nodejs does): no license files in /usr/lib.
[ -d "$lib/node_modules" ] && find "$lib/node_modules" -type f \( -iname 'licen[cs]e*' -o -iname 'copying*' \) -delete

# --- control files ---
cat >"$stage/DEBIAN/control" <<EOF
Package: guestbackup
Version: $version
Architecture: all
Maintainer: $maintainer
Installed-Size: @SIZE@
Depends: nodejs (>= 20.19), qemu-utils, pve-qemu-kvm | qemu-system-common, libnbd-bin, squashfs-tools, squashfuse, fuse3, tar (>= 1.34), zstd, lzop, attr, perl
Section: admin
Priority: optional
Description: backup of QEMU VMs and container trees for Proxmox VE
 guestbackup backs up QEMU virtual machines and container directory trees,
 built on the model of Proxmox VE's backup provider API: VM disks as qcow2
 images with incremental backing-file chains driven by persistent dirty
 bitmaps, containers as tar or squashfs archives, with the guest and firewall
 configuration and the task log.
 .
 Running VMs are backed up over QMP with one-instant fleecing, stopped VMs
 from their disk images. The package contains the guestbackup command and
 the Proxmox VE storage plugin that makes a guestbackup store usable from
 vzdump and the web interface.
EOF
# pve-manager reloads pvedaemon, pveproxy, pvestatd and pvescheduler on this trigger (and on any
# change under /usr/share/perl5/PVE), so a new or changed storage plugin is picked up without a
# maintainer script of ours. Where nothing is interested in it, dpkg ignores it.
echo 'activate-noawait pve-api-updates' >"$stage/DEBIAN/triggers"

# --- normalize: modes, mtimes; then size and checksums ---
find "$stage" -type d -exec chmod 0755 {} +
find "$stage" -type f -exec chmod 0644 {} +
chmod 0755 "$stage/usr/bin/guestbackup"
# Scripts of the bundled packages (a '#!' line, e.g. pino/bin.js) keep being executable.
if [ -d "$lib/node_modules" ]; then
  find "$lib/node_modules" -type f -print0 | while IFS= read -r -d '' f; do
    if head -c 2 "$f" | grep -qx '#!'; then chmod 0755 "$f"; fi
  done
fi
size=$(find "$stage" -path "$stage/DEBIAN" -prune -o -mindepth 1 -printf '%y %s\n' |
  awk '{ n += ($1 == "f" || $1 == "l") ? int(($2 + 1023) / 1024) : 1 } END { print n }')
sed -i "s/@SIZE@/$size/" "$stage/DEBIAN/control"
(cd "$stage" && find usr -type f -print0 | sort -z | xargs -0 md5sum >DEBIAN/md5sums)
chmod 0644 "$stage/DEBIAN/md5sums"
find "$stage" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +

mkdir -p "$out"
deb=$out/guestbackup_${version}_all.deb
dpkg-deb --root-owner-group -Zxz --threads-max=1 --build "$stage" "$deb" >/dev/null
echo "build-deb: $deb ($pm_count Perl modules, entry $entry)"
