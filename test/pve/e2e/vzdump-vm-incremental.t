#!/usr/bin/perl
# Incremental VM backups as vzdump and qemu-server drive them (pve-backup-provider-api.md §2.5,
# §2.7, §5.2-5.4), four jobs in a row on one disk:
#   1. full ('new');
#   2. incremental ('use' → bitmap-mode 'reuse'), only the dirty blocks read;
#   3. incremental whose task fails after backup_vm returned (QEMU has already committed the
#      bitmap, pve-manager PVE/VZDump.pm calls backup_cleanup(0) later): the backup goes;
#   4. the next query must answer 'new' — building on backup 2 with a bitmap that only holds the
#      writes since 3 would silently miss 3's writes;
#   5. a correct incremental again, on 4.
# Every kept backup is restored as qemu-server does and compared with the disk at its instant.
# QEMU's in-memory bitmap `snapshot-access:<storeid>` is stood in for by a persistent bitmap of
# the same name that qemu-storage-daemon exports as `qemu:dirty-bitmap:<name>`; the teardown's commit
# (`backup-access-teardown success=1`: clear, keep tracking) by `qemu-img bitmap --clear`.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/../lib", "$FindBin::Bin/../../../pve";
use Test::More;

our ($ROOT, $TMP, $PLUGIN, $STOREID, @LOG);
require "$FindBin::Bin/lib-e2e.pl";

need($_) for qw(qemu-img qemu-storage-daemon qemu-io cmp);

my $size = 8 * 1024 * 1024;
my $store = "$TMP/store";
mkdir($store) or die "$store: $!";
my $scfg = { type => 'guestbackup', path => $store, 'gb-vm-backup-mode' => 'incremental' };
my $disk = "$TMP/disk.qcow2";
my $bitmap = "snapshot-access:$STOREID";
my $sock = "$TMP/nbd.sock";
my $bitmap_exists = 0;

sub qemu_io { run_ok("qemu-io -f qcow2 -c '$_[0]' $disk") }

# One vzdump job of VM 100; returns (query answer, volname).
sub job {
    my (%o) = @_;
    my $p = $PLUGIN->new_backup_provider($scfg, $STOREID, log_function());
    gb(sub { $p->job_init(time()) }, 'job_init');
    my $init = gb(sub { $p->backup_init(100, 'qemu', time()) }, 'backup_init');
    my $volname = "backup/$init->{'archive-name'}";
    gb(sub { $p->backup_get_mechanism(100, 'qemu') }, 'backup_get_mechanism');
    @LOG = ();
    my $q = gb(sub { $p->backup_vm_query_incremental(100, { 'drive-scsi0' => { size => $size } }) },
        'backup_vm_query_incremental');
    my $answer = $q->{'drive-scsi0'} // 'none';
    my $reason = join(' | ', map { $_->[1] } @LOG);
    # qemu-server backup_access_to_volume_info: 'use' of an existing bitmap reaches backup_vm as
    # 'reuse'; 'new' (or a missing one) recreates the bitmap.
    my $mode = $answer eq 'use' && $bitmap_exists ? 'reuse' : 'new';
    if ($mode eq 'new') {
        run_ok("qemu-img bitmap --remove $disk '$bitmap'") if $bitmap_exists;
        run_ok("qemu-img bitmap --add $disk '$bitmap'");
        $bitmap_exists = 1;
    }
    # QEMU's backup-access export (§5.2 step 6): an NBD export named after the device, with the
    # bitmap as its meta context, served here by qemu-storage-daemon over the disk.
    my $pidfile = "$TMP/qsd.pid";
    unlink($pidfile);
    my $nbd = fork() // die "fork: $!";
    if (!$nbd) {
        exec('qemu-storage-daemon',
            '--blockdev', qq({"driver":"file","node-name":"f","filename":"$disk","read-only":true}),
            '--blockdev', '{"driver":"qcow2","node-name":"d","file":"f","read-only":true}',
            '--nbd-server', "addr.type=unix,addr.path=$sock",
            '--export', qq({"type":"nbd","id":"e","node-name":"d","name":"drive-scsi0","bitmaps":["$bitmap"]}),
            '--pidfile', $pidfile);
        die "qemu-storage-daemon: $!";
    }
    select(undef, undef, undef, 0.1) for grep { !-s $pidfile } 1 .. 100;
    ok(-s $pidfile, "round $o{round}: the export is served");
    my $volume = { size => $size, 'bitmap-mode' => $mode, 'nbd-path' => $sock,
        'bitmap-name' => $bitmap };
    gb(sub { $p->backup_vm(100, "name: inc\n", { 'drive-scsi0' => $volume }, {}) }, 'backup_vm');
    kill('TERM', $nbd);
    waitpid($nbd, 0);
    unlink($sock);
    # backup_vm returned: qemu-server tears down with success=1, QEMU clears the bitmap.
    run_ok("qemu-img bitmap --clear $disk '$bitmap'");
    my $ref = "$TMP/ref-" . ($o{round}) . ".raw";
    run_ok("qemu-img convert -f qcow2 -O raw $disk $ref");
    if ($o{fail}) {
        gb(sub { $p->backup_cleanup(100, 'qemu', 0, { error => $o{fail} }) }, 'backup_cleanup(0)');
    } else {
        my $c = gb(sub { $p->backup_cleanup(100, 'qemu', 1, {}) }, 'backup_cleanup');
        ok($c->{stats}{'archive-size'} > 0, "round $o{round}: archive-size");
    }
    gb(sub { $p->job_cleanup() }, 'job_cleanup');
    return ($answer, $volname, $ref, $reason);
}

# qemu-server restore_external_archive: convert the returned raw file, compare with $ref.
sub restored_is {
    my ($volname, $ref, $what) = @_;
    my $r = $PLUGIN->new_backup_provider($scfg, $STOREID, sub { note("$_[0]: $_[1]") });
    gb(sub { $r->restore_vm_init($volname) }, 'restore_vm_init');
    my $vi = gb(sub { $r->restore_vm_volume_init($volname, 'drive-scsi0', {}) },
        'restore_vm_volume_init');
    my $out = "$TMP/restored.raw";
    unlink($out);
    run_ok("qemu-img convert -f raw -O raw '$vi->{'qemu-img-path'}' $out");
    gb(sub { $r->restore_vm_volume_cleanup($volname, 'drive-scsi0', {}) }, 'restore_vm_volume_cleanup');
    gb(sub { $r->restore_vm_cleanup($volname) }, 'restore_vm_cleanup');
    is(system('cmp', '-s', $out, $ref), 0, "$what restores the disk as it was");
}

sub listed {
    my $list = gb(sub { $PLUGIN->list_volumes($STOREID, $scfg, 100, ['backup']) }, 'list_volumes');
    return { map { ($_->{volid} =~ s/^\Q$STOREID\E://r) => $_ } @$list };
}

SKIP: {
    gb(sub { $PLUGIN->activate_storage($STOREID, $scfg, {}) }, 'activate_storage');
    run_ok("qemu-img create -q -f qcow2 $disk $size");

    qemu_io('write -P 0x11 0 6M');
    my ($a1, $v1, $r1) = job(round => 1);
    is($a1, 'new', 'round 1: a full backup');

    qemu_io('write -P 0x22 1M 512k');
    my ($a2, $v2, $r2) = job(round => 2);
    is($a2, 'use', 'round 2: incremental on round 1');
    my $gb_list = `$ENV{GUESTBACKUP_BIN} list --store $store --json`;
    like($gb_list, qr/"parent":\s*"\Q$STOREID:$v1\E"/, 'round 2 builds on round 1');

    qemu_io('write -P 0x33 3M 256k');
    my ($a3, $v3) = job(round => 3, fail => 'prune failed');
    is($a3, 'use', 'round 3: incremental on round 2');
    ok(!listed()->{$v3}, 'round 3, whose task failed, is not kept');

    qemu_io('write -P 0x44 5M 128k');
    my ($a4, $v4, $r4, $why4) = job(round => 4);
    is($a4, 'new', 'round 4: full, the bitmap belongs to the discarded round 3');
    like($why4, qr/\Q$v3\E|discarded|removed/, "round 4 says why: $why4");

    qemu_io('write -P 0x55 7M 64k');
    my ($a5, $v5, $r5) = job(round => 5);
    is($a5, 'use', 'round 5: incremental on round 4');

    my $kept = listed();
    ok($kept->{$v1} && $kept->{$v2} && $kept->{$v4} && $kept->{$v5}, 'rounds 1, 2, 4, 5 are listed');
    restored_is($v1, $r1, 'round 1');
    restored_is($v2, $r2, 'round 2 (incremental)');
    restored_is($v4, $r4, 'round 4 (with round 3\'s writes)');
    restored_is($v5, $r5, 'round 5 (incremental on 4)');
    # The CLI restores what the plugin wrote identically.
    my $cli = "$TMP/cli";
    run_ok("$ENV{GUESTBACKUP_BIN} restore --store $store $STOREID:$v5 --target $cli");
    is(system('cmp', '-s', "$cli/drive-scsi0.raw", $r5), 0, 'the CLI restores round 5 the same');
}

done_testing();
