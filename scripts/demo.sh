#!/bin/bash
# `make demo`: back up and restore a VM disk written by a real QEMU, and a container directory,
# through the guestbackup CLI, then show the result. Everything lives in .demo/ (recreated).
set -euo pipefail
cd "$(dirname "$0")/.."
GB=bin/guestbackup
D=$PWD/.demo
rm -rf "$D"; mkdir -p "$D"
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
show() { printf '$ %s\n' "$*"; "$@"; }

step "1. A store (incremental VM backups, tar containers, keep the last 3)"
show $GB init "$D/store" --vm-backup-mode incremental --prune-backups keep-last=3 >/dev/null
cat "$D/store/guestbackup-store.json"

step "2. A VM disk written by a real QEMU (paused VM, guest writes via HMP qemu-io)"
node --import tsx scripts/demo-disk.ts "$D"
printf 'name: demo-vm\nmemory: 512\nscsi0: local:100/vm-100-disk-0.qcow2,size=256M\n' > "$D/vm.conf"
qemu-img info "$D/vm-disk.qcow2" | grep -E 'virtual size|disk size'

step "3. Back up VM 100"
show $GB backup --store "$D/store" --vmid 100 --config "$D/vm.conf" --disk scsi0="$D/vm-disk.qcow2"

step "4. A container tree (owners, modes, xattr, ACL, symlink, hard link, sparse file)"
R=$D/ct-root
mkdir -p "$R"/{etc,home/alice,var/log,tmp,sbin}
echo "demo-ct" > "$R/etc/hostname"
echo "hello from alice" > "$R/home/alice/notes.txt"
chown -R 1000:1000 "$R/home/alice"
ln -s ../etc/hostname "$R/sbin/hostname-link"
ln "$R/etc/hostname" "$R/etc/hostname.hard"
truncate -s 100M "$R/var/log/sparse.img"; printf 'tail' | dd of="$R/var/log/sparse.img" bs=1 seek=50000000 conv=notrunc status=none
setfattr -n user.demo -v yes "$R/etc/hostname"
setfacl -m u:1234:rw "$R/home/alice/notes.txt"
echo "scratch" > "$R/tmp/scratch"
printf 'arch: amd64\nhostname: demo-ct\nrootfs: local:101/vm-101-disk-0.raw,size=1G\n' > "$D/ct.conf"
show $GB backup --store "$D/store" --vmid 101 --config "$D/ct.conf" --rootfs "$R" --exclude '/tmp/?*'

step "5. What the store holds"
show $GB list --store "$D/store"
VM=$($GB list --store "$D/store" --vmid 100 --json | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s)[0].volid.replace(/^[^:]*:/,"")))')
CT=$($GB list --store "$D/store" --vmid 101 --json | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s)[0].volid.replace(/^[^:]*:/,"")))')
du -sh "$D/store/100/"* | sed 's/^/  /'

step "6. Restore both"
show $GB restore --store "$D/store" "$VM" --target "$D/restore-vm"
show $GB restore --store "$D/store" "$CT" --target "$D/restore-ct"
show $GB show-config --store "$D/store" "$VM"

step "7. Check"
show qemu-img compare -f qcow2 -F raw "$D/vm-disk.qcow2" "$D/restore-vm/drive-scsi0.raw"
echo "restored raw disk allocates $(du -h "$D/restore-vm/drive-scsi0.raw" | cut -f1) of 256M"
show diff -r --no-dereference "$R" "$D/restore-ct/rootfs" || true
echo "(tmp/scratch is excluded by '/tmp/?*' as intended)"
getfattr -n user.demo "$D/restore-ct/rootfs/etc/hostname" | grep user.demo
getfacl -p "$D/restore-ct/rootfs/home/alice/notes.txt" 2>/dev/null | grep 'user:1234'
stat -c 'owner %u:%g %n' "$D/restore-ct/rootfs/home/alice/notes.txt"
echo "sparse file: $(du -k "$D/restore-ct/rootfs/var/log/sparse.img" | cut -f1) KiB allocated of 100 MiB"
step "Demo OK"
