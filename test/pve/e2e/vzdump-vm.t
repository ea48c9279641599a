#!/usr/bin/perl
# A VM backup as vzdump runs it (pve-manager PVE/VZDump.pm, docs: pve-backup-provider-api.md
# §2.7), through qemu-server PVE/VZDump/QemuServer.pm::archive_external's provider calls with the
# NBD mechanism (qemu-nbd stands in for QEMU's backup-access export: the export name is the
# device name), then a restore as qemu-server PVE/QemuServer.pm::restore_external_archive does
# (§5.6), then the storage side (list, attributes, delete).
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/../lib", "$FindBin::Bin/../../../pve";
use Test::More;

our ($ROOT, $TMP, $PLUGIN, $STOREID, @LOG);
require "$FindBin::Bin/lib-e2e.pl";

need($_) for qw(qemu-img qemu-nbd qemu-io cmp);

my $size = 4 * 1024 * 1024;
my $store = "$TMP/store";
mkdir($store) or die "$store: $!";
my $scfg = { type => 'guestbackup', path => $store, 'prune-backups' => 'keep-all=1' };
my $volname;

SKIP: {
    gb(sub { $PLUGIN->activate_storage($STOREID, $scfg, {}) }, 'activate_storage');
    ok(gb(sub { $PLUGIN->check_connection($STOREID, $scfg) }, 'check_connection'), 'connection');

    # VZDump->new: one provider for the whole job
    my $p = $PLUGIN->new_backup_provider($scfg, $STOREID, log_function());
    my $name = gb(sub { $p->provider_name() }, 'provider_name');
    ok(defined($name) && length($name), "provider_name: $name");

    my $start = time();
    gb(sub { $p->job_init($start) }, 'job_init');

    my $init = gb(sub { $p->backup_init(100, 'qemu', $start) }, 'backup_init');
    my $archive = ref($init) eq 'HASH' ? $init->{'archive-name'} : undef;
    like($archive // '', qr/^([a-zA-Z0-9\-\.\+\=\_]|\/|:)+$/, 'archive-name as vzdump checks it');
    $volname = "backup/$archive";

    my $mech = gb(sub { $p->backup_get_mechanism(100, 'qemu') }, 'backup_get_mechanism');
    is($mech, 'nbd', 'mechanism');

    my $q = gb(sub { $p->backup_vm_query_incremental(100, { 'drive-scsi0' => { size => $size } }) },
        'backup_vm_query_incremental');
    my $mode = ref($q) eq 'HASH' ? ($q->{'drive-scsi0'} // 'none') : 'none';
    like($mode, qr/^(new|use|none)$/, "query: $mode");

    # The disk and its export. With a bitmap, QEMU exports a new, fully dirty one (§2.5: 'new'
    # and a missing 'use' both reach backup_vm as 'new'): a bitmap added before all writes.
    my $disk = "$TMP/disk.qcow2";
    run_ok("qemu-img create -q -f qcow2 $disk $size");
    run_ok("qemu-img bitmap --add $disk gb-e2e") if $mode ne 'none';
    run_ok("qemu-io -f qcow2 -c 'write -P 0x5a 0 $size' $disk");
    my $sock = "$TMP/nbd.sock";
    my @bitmap = $mode ne 'none' ? ('-B', 'gb-e2e') : ();
    my $nbd = fork() // die "fork: $!";
    if (!$nbd) {
        exec('qemu-nbd', '-r', '-t', '-f', 'qcow2', '-x', 'drive-scsi0', '-k', $sock, @bitmap, $disk);
        die "qemu-nbd: $!";
    }
    select(undef, undef, undef, 0.1) for grep { !-S $sock } 1 .. 100;
    ok(-S $sock, 'qemu-nbd listens');

    my $volume = { size => $size, 'bitmap-mode' => ($mode eq 'none' ? 'none' : 'new'),
        'nbd-path' => $sock };
    $volume->{'bitmap-name'} = 'gb-e2e' if $mode ne 'none';
    my $conf = "name: e2e\nscsi0: local:100/vm-100-disk-0.qcow2,size=4M\n"
        . "#qmdump#map:scsi0:drive-scsi0:local:qcow2:\n";
    @LOG = ();
    gb(sub { $p->backup_vm(100, $conf, { 'drive-scsi0' => $volume }, {}) }, 'backup_vm');
    kill('TERM', $nbd);
    waitpid($nbd, 0);
    note("backup_vm logged: " . join(' | ', map { "$_->[0]: $_->[1]" } @LOG));

    # VZDump.pm: notes and protected before backup_cleanup, then the prune
    gb(sub { $PLUGIN->update_volume_attribute($scfg, $STOREID, $volname, 'notes', "e2e gr\x{fc}n") },
        'update_volume_attribute notes');
    gb(sub { $PLUGIN->update_volume_attribute($scfg, $STOREID, $volname, 'protected', 1) },
        'update_volume_attribute protected');
    my $pruned = gb(sub {
        $PLUGIN->prune_backups($scfg, $STOREID, { 'keep-last' => 1 }, 100, 'qemu', 0, log_function())
    }, 'prune_backups');
    my ($mine) = grep { $_->{volid} eq "$STOREID:$volname" } @$pruned;
    is($mine->{mark} // '', 'protected', 'prune keeps the protected backup');

    my $clean = gb(sub { $p->backup_cleanup(100, 'qemu', 1, {}) }, 'backup_cleanup');
    ok($clean->{stats}{'archive-size'} > 0, 'archive-size');
    my $tmplog = "$TMP/task.log";
    open(my $fh, '>', $tmplog) or die;
    print $fh "INFO: starting new backup job\n";
    close($fh);
    gb(sub { $p->backup_handle_log_file(100, $tmplog) }, 'backup_handle_log_file');
    gb(sub { $p->job_cleanup() }, 'job_cleanup');
    gb(sub { $p->job_cleanup() }, 'job_cleanup again'); # VZDump.pm: the error path calls it again

    # storage side
    my $list = gb(sub { $PLUGIN->list_volumes($STOREID, $scfg, 100, ['backup']) }, 'list_volumes');
    my ($vol) = grep { $_->{volid} eq "$STOREID:$volname" } @$list;
    ok($vol, 'listed');
    is($vol->{subtype}, 'qemu', 'subtype');
    is($vol->{vmid}, 100, 'vmid');
    ok($vol->{protected}, 'protected');
    my @pv = gb(sub { $PLUGIN->parse_volname($volname) }, 'parse_volname');
    is_deeply([@pv[0, 1, 2]], ['backup', $archive, 100], 'parse_volname');
    my @path = gb(sub { $PLUGIN->path($scfg, $volname, $STOREID) }, 'path');
    is_deeply([@path[1, 2]], [100, 'backup'], 'path owner and vtype');
    my $vsize = gb(sub { scalar $PLUGIN->volume_size_info($scfg, $STOREID, $volname, 5) }, 'volume_size_info');
    ok($vsize > 0, "volume_size_info scalar: $vsize");
    my $notes = gb(sub { $PLUGIN->get_volume_attribute($scfg, $STOREID, $volname, 'notes') }, 'notes');
    is($notes, "e2e gr\x{fc}n", 'notes');

    # qemu-server restore_external_archive: a new provider instance
    my $r = $PLUGIN->new_backup_provider($scfg, $STOREID, sub { note("$_[0]: $_[1]") });
    my @mech = gb(sub { $r->restore_get_mechanism($volname) }, 'restore_get_mechanism');
    is_deeply(\@mech, ['qemu-img', 'qemu'], 'restore mechanism');
    my $devinfo = gb(sub { $r->restore_vm_init($volname) }, 'restore_vm_init');
    is($devinfo->{'drive-scsi0'}{size}, $size, 'device size');
    my $gconf = gb(sub { $r->archive_get_guest_config($volname) }, 'archive_get_guest_config');
    like($gconf, qr/^#qmdump#map:scsi0:drive-scsi0:local:qcow2:$/m, 'config with the map line');
    my $fw = gb(sub { $r->archive_get_firewall_config($volname) }, 'archive_get_firewall_config');
    is($fw, undef, 'no firewall config');
    my $vi = gb(sub { $r->restore_vm_volume_init($volname, 'drive-scsi0', {}) }, 'restore_vm_volume_init');
    my $src = $vi->{'qemu-img-path'} // '';
    ok(-f $src || -b $src, "qemu-img-path is a file or block device: $src");
    my $target = "$TMP/restored.raw";
    run_ok("qemu-img create -q -f raw $target $size");
    run_ok("qemu-img convert -n -f raw -O raw '$src' $target");
    gb(sub { $r->restore_vm_volume_cleanup($volname, 'drive-scsi0', {}) }, 'restore_vm_volume_cleanup');
    gb(sub { $r->restore_vm_cleanup($volname) }, 'restore_vm_cleanup');
    run_ok("qemu-img convert -f qcow2 -O raw $disk $TMP/orig.raw");
    run_ok("cmp $TMP/orig.raw $target");

    # delete (API imgdel → free_image): refused while protected
    ok(!eval { $PLUGIN->free_image($STOREID, $scfg, $volname, 0); 1 }, 'protected: not freed');
    gb(sub { $PLUGIN->update_volume_attribute($scfg, $STOREID, $volname, 'protected', 0) }, 'unprotect');
    gb(sub { $PLUGIN->free_image($STOREID, $scfg, $volname, 0) }, 'free_image');
    $list = gb(sub { $PLUGIN->list_volumes($STOREID, $scfg, 100, ['backup']) }, 'list_volumes');
    ok(!grep({ $_->{volid} eq "$STOREID:$volname" } @$list), 'gone');
}

done_testing();
