#!/usr/bin/perl
# PVE::Storage::Custom::GuestBackupPlugin: what Proxmox's loader checks, and that each storage
# method sends the doc's args (pve-storage src/PVE/Storage/Plugin.pm signatures) and returns
# the reply as Proxmox expects (lists, scalar context).
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib", "$FindBin::Bin/../../pve";
use Test::More;

use PVE::Storage::Custom::GuestBackupPlugin;

our ($FAKES, $TMP);
require "$FindBin::Bin/lib-test.pl";

my $P = 'PVE::Storage::Custom::GuestBackupPlugin';
my $scfg = { path => '/mnt/gb', 'prune-backups' => 'keep-last=3', type => 'guestbackup' };

subtest 'what the loader and SectionConfig see' => sub {
    ok($P->isa('PVE::Storage::Plugin'), 'isa PVE::Storage::Plugin');
    is($P->api(), 11, 'api 11 (PVE 8.4: 9..11, 9.x: 9..15)');
    is($P->type(), 'guestbackup', 'type');
    is_deeply(
        $P->plugindata(),
        {
            content => [{ backup => 1, none => 1 }, { backup => 1 }],
            features => { 'backup-provider' => 1 },
            'sensitive-properties' => {},
        },
        'plugindata',
    );
    # every property name another plugin defines (see the comment above properties())
    my %taken = map { $_ => 1 } qw(
        authsupported base blocksize comstar_hg comstar_tg create-base-path create-subdirs
        data-pool datastore domain encryption-key export fs-name fuse is_mountpoint
        iscsiprovider keyring krbd lio_tpg master-pubkey mkdir monhost mountpoint namespace
        nocow nowritecache password path pool portal saferemove saferemove-stepsize
        saferemove_throughput server server2 share skip-cert-verification smbversion sparse
        tagged_only target thinpool transport username vgname volume zfs-base-path bwlimit
        type storage nodes content disable prune-backups max-protected-backups shared subdir
        format preallocation content-dirs options port snapshot-as-volume-chain
        lxc-backup-mode vm-backup-mechanism vm-backup-mode repository-path ssh-private-key
        ssh-server-public-keys
    );
    for my $name (sort keys %{ $P->properties() }) {
        like($name, qr/^gb-/, "$name is prefixed");
        ok(!$taken{$name}, "$name is defined by no other plugin");
    }
    my $options = $P->options();
    is_deeply($options->{path}, { fixed => 1 }, 'path is fixed');
    ok($options->{$_}, "option $_")
        for qw(prune-backups max-protected-backups nodes disable), keys %{ $P->properties() };
};

# one call through the echo fake: the request it received
sub request_of {
    my ($code) = @_;
    use_fake('echo.pl');
    my @r = $code->();
    my ($req) = @{ recorded() };
    return ($req, @r);
}

subtest 'args as the doc lists them' => sub {
    my @cases = (
        [sub { $P->list_volumes('gb', $scfg, '100', ['backup']) }, 'list_volumes', [100, ['backup']]],
        [sub { $P->prune_backups($scfg, 'gb', { 'keep-last' => '3' }, '100', 'qemu', '', sub { }) },
            'prune_backups', [{ 'keep-last' => 3 }, 100, 'qemu', 0]],
        [sub { $P->free_image('gb', $scfg, 'backup/x', '', undef) }, 'free_image', ['backup/x', 0, undef]],
        [sub { $P->get_volume_attribute($scfg, 'gb', 'backup/x', 'notes') },
            'get_volume_attribute', ['backup/x', 'notes']],
        [sub { $P->update_volume_attribute($scfg, 'gb', 'backup/x', 'protected', '1') },
            'update_volume_attribute', ['backup/x', 'protected', 1]],
        [sub { $P->update_volume_attribute($scfg, 'gb', 'backup/x', 'notes', '42') },
            'update_volume_attribute', ['backup/x', 'notes', '42']],
        [sub { $P->activate_storage('gb', $scfg, { other => 'state' }) }, 'activate_storage', [{}]],
        [sub { $P->deactivate_storage('gb', $scfg, {}) }, 'deactivate_storage', [{}]],
        [sub { $P->check_connection('gb', $scfg) }, 'check_connection', [{}]],
        [sub { $P->status('gb', $scfg, {}) }, 'status', []],
        [sub { my @r = $P->path($scfg, 'backup/x', 'gb', undef) }, 'path', ['backup/x', undef]],
        [sub { my @r = $P->volume_size_info($scfg, 'gb', 'backup/x', '5') },
            'volume_size_info', ['backup/x', 5]],
    );
    for my $c (@cases) {
        my ($code, $method, $args) = @$c;
        my ($req) = request_of($code);
        is($req->{method}, $method, "$method: method");
        is($req->{storeid}, 'gb', "$method: storeid");
        is_deeply($req->{scfg}, $scfg, "$method: scfg");
        is_deeply($req->{args}, $args, "$method: args");
        is($req->{session}, undef, "$method: no session");
    }
    my ($req) = request_of(sub { my @r = $P->parse_volname('backup/x') });
    is_deeply([$req->{storeid}, $req->{scfg}, $req->{args}], [undef, {}, ['backup/x']],
        'parse_volname: Proxmox gives no storeid/scfg');
};

subtest 'results' => sub {
    use_fake('echo.pl');
    is_deeply([$P->parse_volname('backup/x')],
        ['backup', 'qemu-100-x', 100, undef, undef, 0, 'directory'], 'parse_volname list');
    is_deeply([$P->path($scfg, 'backup/x', 'gb')], ['/store/backup/qemu-100-x', 100, 'backup'],
        'path list');
    is(scalar($P->path($scfg, 'backup/x', 'gb')), '/store/backup/qemu-100-x', 'path scalar');
    is_deeply([$P->volume_size_info($scfg, 'gb', 'backup/x', 5)],
        [4096, 'directory', 1024, undef, 1700000000], 'volume_size_info list');
    is(scalar($P->volume_size_info($scfg, 'gb', 'backup/x', 5)), 4096, 'volume_size_info scalar');
    is_deeply([$P->status('gb', $scfg, {})], [1000, 600, 400, 1], 'status list');
    is($P->check_connection('gb', $scfg), 1, 'check_connection');
    is($P->activate_storage('gb', $scfg, {}), 1, 'activate_storage');
    is($P->free_image('gb', $scfg, 'backup/x', 0), undef, 'free_image');
};

subtest 'prune_backups logs through the $logfunc Proxmox passes' => sub {
    use_fake('echo.pl');
    my @seen;
    my $r = $P->prune_backups($scfg, 'gb', {}, 100, 'qemu', 1, sub { push @seen, [@_] });
    is($r, 'done', 'result');
    is_deeply(\@seen, [['info', 'one'], ['warn', 'two'], ['err', "dr\xc3\xaai"]], 'logged');
};

subtest 'errors' => sub {
    use_fake('dead.sh');
    ok(!eval { $P->status('gb', $scfg, {}); 1 }, 'status dies');
    is($@, "guestbackup: service died (exit 1): boom\n", 'with the one-line message');
    use_fake('hang.sh');
    local $ENV{GUESTBACKUP_CALL_TIMEOUT} = 0.5;
    ok(!eval { $P->list_volumes('gb', $scfg, 100, ['backup']); 1 }, 'hung list_volumes dies');
    is($@, "guestbackup: no reply to list_volumes within 0.5 s\n", 'storage timeout');
};

subtest 'refused and local methods' => sub {
    for my $m (qw(create_base clone_image alloc_image volume_resize volume_snapshot
        volume_snapshot_rollback volume_snapshot_delete volume_snapshot_info
        volume_rollback_is_possible rename_volume rename_snapshot volume_export volume_import
        map_volume unmap_volume)) {
        ok(!eval { $P->$m('gb', $scfg, 'backup/x'); 1 }, "$m dies");
        like($@, qr/^guestbackup storage: [^\n]+ is not supported \(backup-only storage\)\n\z/,
            "$m: one line");
    }
    $ENV{GUESTBACKUP_BIN} = "$TMP/not-there"; # none of these may spawn
    is_deeply($P->list_images('gb', $scfg, 100), [], 'list_images: none');
    is($P->volume_has_feature($scfg, 'copy', 'gb', 'backup/x'), undef, 'no volume features');
    is($P->activate_volume('gb', $scfg, 'backup/x'), 1, 'activate_volume no-op');
};

subtest 'new_backup_provider' => sub {
    my $log = sub { };
    my $p = $P->new_backup_provider($scfg, 'gb', $log);
    isa_ok($p, 'PVE::BackupProvider::Plugin::GuestBackup');
    isa_ok($p, 'PVE::BackupProvider::Plugin::Base');
    is($p->{storeid}, 'gb', 'storeid');
    is($p->{scfg}, $scfg, 'scfg');
    is($p->{log_function}, $log, 'log function');
    is($p->{session}, undef, 'no session yet');
};

done_testing();
