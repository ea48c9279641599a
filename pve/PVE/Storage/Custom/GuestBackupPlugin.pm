package PVE::Storage::Custom::GuestBackupPlugin;

# The Proxmox VE storage plugin of guestbackup: a backup-only storage whose every method is
# forwarded, unchanged, to `guestbackup pve-call` (docs/pve-protocol.md). No logic lives here.
# Proxmox loads it from /usr/share/perl5/PVE/Storage/Custom/ (pve-storage src/PVE/Storage.pm,
# "load third-party plugins").

use strict;
use warnings;

use PVE::GuestBackup::Call;
use PVE::BackupProvider::Plugin::GuestBackup;

use base qw(PVE::Storage::Plugin);

# The loader (pve-storage src/PVE/Storage.pm) accepts APIVER - APIAGE <= api() <= APIVER.
# Its history (git log -L of `use constant APIVER` in src/PVE/Storage.pm):
#   11/2 e2dc01a (2025-04, libpve-storage-perl 8.3.5; stable-8 and so PVE 8.4 stay at 11/2)
#   12/3 280bb6b (9.0.2)  13/4 8818ff0 (9.0.16)  14/5 f6c3d28 (9.1.3)  15/6 2f7f775 (9.1.6)
# so 8.4 accepts 9..11 and every 9.x release so far accepts 9..APIVER. 11 is in all of them, and
# it is the version that introduced the 'backup-provider' feature (ApiChangeLog "Version 11").
sub api { return 11 }

sub type { return 'guestbackup' }

sub plugindata {
    return {
        content => [{ backup => 1, none => 1 }, { backup => 1 }],
        features => { 'backup-provider' => 1 },
        'sensitive-properties' => {},
    };
}

# Property names are global to PVE::SectionConfig: a name that another plugin also defines
# breaks the loading of storage.cfg for every storage on the node. Ours carry the prefix 'gb-'.
# Names checked (none starts with 'gb-'): the `properties` of every plugin in pve-storage
# src/PVE/Storage/*Plugin.pm (master and stable-8) — authsupported base blocksize comstar_hg
# comstar_tg create-base-path create-subdirs data-pool datastore domain encryption-key export
# fs-name fuse is_mountpoint iscsiprovider keyring krbd lio_tpg master-pubkey mkdir monhost
# mountpoint namespace nocow nowritecache password path pool portal saferemove
# saferemove-stepsize saferemove_throughput server server2 share skip-cert-verification
# smbversion sparse tagged_only target thinpool transport username vgname volume zfs-base-path
# bwlimit; Plugin.pm's $defaultData — type storage nodes content disable prune-backups
# max-protected-backups shared subdir format preallocation content-dirs options port
# snapshot-as-volume-chain; Proxmox's example providers (pve-storage-plugin-examples) —
# lxc-backup-mode vm-backup-mechanism vm-backup-mode (directory), repository-path server port
# username ssh-private-key password ssh-server-public-keys (Borg).
sub properties {
    return {
        'gb-vm-backup-mode' => {
            description => "guestbackup: 'incremental' backs VMs up incrementally when a"
                . " dirty bitmap allows it, 'full' always copies whole disks.",
            type => 'string',
            enum => ['incremental', 'full'],
            default => 'incremental',
        },
        'gb-lxc-backup-mode' => {
            description => "guestbackup: container archives as 'tar' or 'squashfs'.",
            type => 'string',
            enum => ['tar', 'squashfs'],
            default => 'tar',
        },
        'gb-incremental-sample' => {
            description => "guestbackup: clean blocks of an incremental VM backup compared"
                . " with the previous backup, to catch a dirty bitmap that missed writes.",
            type => 'integer',
            minimum => 0,
            maximum => 100000,
            default => 64,
        },
        'gb-verify-after-backup' => {
            description => "guestbackup: read stored VM images back and compare them with the"
                . " digests taken from the source before a backup is committed: 'first' for"
                . " the full backup starting a chain, 'always' or 'never'.",
            type => 'string',
            enum => ['first', 'always', 'never'],
            default => 'first',
        },
        'gb-vm-compress' => {
            description => "guestbackup: store VM disk images with zstd-compressed qcow2"
                . " clusters (readable by any qemu-img), or 'none'.",
            type => 'string',
            enum => ['zstd', 'none'],
            default => 'none',
        },
        'gb-lxc-compress' => {
            description => "guestbackup: compress container tar archives as vzdump's"
                . " 'compress' names it ('zstd', 'gzip', 'lzo'), or 'none'.",
            type => 'string',
            enum => ['zstd', 'gzip', 'lzo', 'none'],
            default => 'none',
        },
    };
}

sub options {
    return {
        path => { fixed => 1 }, # DirPlugin's property: the store's directory
        'prune-backups' => { optional => 1 },
        'max-protected-backups' => { optional => 1 },
        nodes => { optional => 1 },
        disable => { optional => 1 },
        'gb-vm-backup-mode' => { optional => 1 },
        'gb-lxc-backup-mode' => { optional => 1 },
        'gb-incremental-sample' => { optional => 1 },
        'gb-verify-after-backup' => { optional => 1 },
        'gb-vm-compress' => { optional => 1 },
        'gb-lxc-compress' => { optional => 1 },
    };
}

# One storage method = one pve-call. $args are the Perl arguments after $class/$scfg/$storeid.
# Storage methods have no log function: warn/err lines are printed with warn (the doc);
# prune_backups passes the $logfunc Proxmox gives it.
sub _call {
    my ($method, $scfg, $storeid, $args, $log) = @_;
    my $reply = PVE::GuestBackup::Call::call(
        method => $method,
        storeid => $storeid,
        scfg => $scfg,
        args => $args,
        session => undef,
        log => $log,
        timeout => PVE::GuestBackup::Call::storage_timeout(),
    );
    return $reply->{result};
}

sub _list {
    my ($method, $result) = @_;
    die "guestbackup: malformed reply: $method returned no list\n" if ref($result) ne 'ARRAY';
    return @$result;
}

sub _bool { return $_[0] ? 1 : 0 } # the doc: "a Perl boolean as 0/1"

sub _int { # Perl has no integer type: a vmid from the CLI is the string "100"
    my ($v) = @_;
    return defined($v) && $v =~ /^-?\d+$/ ? 0 + $v : $v;
}

# --- Forwarded methods (signatures as in pve-storage src/PVE/Storage/Plugin.pm) ---

# parse_volname gets neither $scfg nor $storeid from Proxmox: storeid is sent as null, scfg {}.
sub parse_volname {
    my ($class, $volname) = @_;
    my @r = _list('parse_volname', _call('parse_volname', {}, undef, [$volname]));
    return wantarray ? @r : $r[-1];
}

sub path {
    my ($class, $scfg, $volname, $storeid, $snapname) = @_;
    my @r = _list('path', _call('path', $scfg, $storeid, [$volname, $snapname]));
    return wantarray ? @r : $r[0];
}

sub list_volumes {
    my ($class, $storeid, $scfg, $vmid, $content_types) = @_;
    return _call('list_volumes', $scfg, $storeid, [_int($vmid), $content_types]);
}

sub volume_size_info {
    my ($class, $scfg, $storeid, $volname, $timeout) = @_;
    my @r = _list(
        'volume_size_info', _call('volume_size_info', $scfg, $storeid, [$volname, _int($timeout)]),
    );
    return wantarray ? @r : $r[0];
}

sub status {
    my ($class, $storeid, $scfg, $cache) = @_;
    return _list('status', _call('status', $scfg, $storeid, []));
}

sub prune_backups {
    my ($class, $scfg, $storeid, $keep, $vmid, $type, $dryrun, $logfunc) = @_;
    $keep = { map { $_ => _int($keep->{$_}) } keys %$keep } if ref($keep) eq 'HASH';
    return _call(
        'prune_backups', $scfg, $storeid, [$keep, _int($vmid), $type, _bool($dryrun)], $logfunc,
    );
}

sub free_image {
    my ($class, $storeid, $scfg, $volname, $isBase, $format) = @_;
    _call('free_image', $scfg, $storeid, [$volname, _bool($isBase), $format]);
    return undef;
}

sub get_volume_attribute {
    my ($class, $scfg, $storeid, $volname, $attribute) = @_;
    return _call('get_volume_attribute', $scfg, $storeid, [$volname, $attribute]);
}

sub update_volume_attribute {
    my ($class, $scfg, $storeid, $volname, $attribute, $value) = @_;
    $value = _bool($value) if defined($attribute) && $attribute eq 'protected';
    _call('update_volume_attribute', $scfg, $storeid, [$volname, $attribute, $value]);
    return undef;
}

# $cache is Proxmox's per-request cache of other plugins' state: it is sent as {}.
sub activate_storage {
    my ($class, $storeid, $scfg, $cache) = @_;
    _call('activate_storage', $scfg, $storeid, [{}]);
    return 1;
}

sub deactivate_storage {
    my ($class, $storeid, $scfg, $cache) = @_;
    _call('deactivate_storage', $scfg, $storeid, [{}]);
    return 1;
}

# Plugin.pm's check_connection gets no $cache; the doc's args are [cache], sent as {}.
sub check_connection {
    my ($class, $storeid, $scfg) = @_;
    return _call('check_connection', $scfg, $storeid, [{}]) ? 1 : 0;
}

# pve-storage src/PVE/Storage.pm::new_backup_provider calls this with ($scfg, $storeid, $log_function).
sub new_backup_provider {
    my ($class, $scfg, $storeid, $log_function) = @_;
    return PVE::BackupProvider::Plugin::GuestBackup->new($class, $scfg, $storeid, $log_function);
}

# --- Not spawning: answers a backup-only storage gives without asking the service ---

# No guest images live here: nothing to list (Plugin.pm would scan "$path/images").
sub list_images { return [] }

# Backup volumes are never attached to guests: activation is a no-op (Plugin.pm's would stat
# a file under "$path/dump", which guestbackup does not use).
sub activate_volume { return 1 }
sub deactivate_volume { return 1 }

# No volume supports snapshots, clones, copies or renames.
sub volume_has_feature { return undef }

# --- Refused: guestbackup only stores backups (like Proxmox's example provider plugins) ---

sub _refuse {
    my ($what) = @_;
    die "guestbackup storage: $what is not supported (backup-only storage)\n";
}

sub create_base { _refuse('creating a base image') }
sub clone_image { _refuse('cloning images') }
sub alloc_image { _refuse('allocating images') }
sub volume_resize { _refuse('resizing volumes') }
sub volume_snapshot { _refuse('volume snapshots') }
sub volume_snapshot_rollback { _refuse('volume snapshot rollback') }
sub volume_snapshot_delete { _refuse('volume snapshots') }
sub volume_snapshot_info { _refuse('volume snapshots') }
sub volume_rollback_is_possible { _refuse('volume snapshot rollback') }
sub rename_volume { _refuse('renaming volumes') }
sub rename_snapshot { _refuse('volume snapshots') }
sub volume_export { _refuse('exporting volumes') }
sub volume_import { _refuse('importing volumes') }
sub map_volume { _refuse('mapping volumes') }
sub unmap_volume { _refuse('mapping volumes') }

# Migration and replication ask for formats: none.
sub volume_export_formats { return () }
sub volume_import_formats { return () }

1;
