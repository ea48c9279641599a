#!/usr/bin/perl
# PVE::BackupProvider::Plugin::GuestBackup: every Base.pm method forwarded, the session carried
# from one call to the next (also into a forked child, as pve-container's run_in_userns does for
# backup_container), arguments normalised, caller quirks forwarded.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib", "$FindBin::Bin/../../pve";
use Test::More;
use JSON::PP;
use POSIX ();

use PVE::BackupProvider::Plugin::Base;
use PVE::BackupProvider::Plugin::GuestBackup;

our ($FAKES, $TMP);
require "$FindBin::Bin/lib-test.pl";

my $C = 'PVE::BackupProvider::Plugin::GuestBackup';
my $scfg = { path => '/mnt/gb' };
my @logged;
sub provider { $C->new('PVE::Storage::Custom::GuestBackupPlugin', $scfg, 'gb', sub { push @logged, [@_] }) }

subtest 'every Base.pm method is overridden' => sub {
    for my $m (@PVE::BackupProvider::Plugin::Base::METHODS) {
        no strict 'refs';
        ok(defined(&{"${C}::$m"}), "$m is defined by $C");
    }
};

subtest 'each method sends its arguments; session carried' => sub {
    use_fake('echo.pl');
    my $p = provider();
    my @calls = (
        [provider_name => []],
        [job_init => ['1733100000']],
        [backup_init => ['100', 'qemu', 1733100001]],
        [backup_get_mechanism => [100, 'qemu']],
        [backup_vm_query_incremental => [100, { 'drive-scsi0' => { size => 1024 } }]],
        [backup_vm => [100, "name: x\n", { 'drive-scsi0' => { size => 1024, 'bitmap-mode' => 'none',
            'nbd-path' => '/run/x.sock' } }, { 'bandwidth-limit' => 0 }]],
        [backup_container_prepare => [100, { directory => '/d', sources => ['.'] }]],
        [backup_container => [100, "arch: amd64\n", ['/tmp/?*'], { directory => '/d' }]],
        [backup_cleanup => ['100', 'qemu', '', { error => 'x' }]],
        [backup_handle_log_file => [100, '/var/tmp/log']],
        [job_cleanup => []],
        [restore_get_mechanism => ['backup/x', 'gb']],
        [archive_get_guest_config => ['backup/x', 'gb']],
        [archive_get_firewall_config => ['backup/x']],
        [restore_vm_init => ['backup/x']],
        [restore_vm_volume_init => ['backup/x', 'drive-scsi0', {}]],
        [restore_vm_volume_cleanup => ['backup/x', 'drive-scsi0', {}]],
        [restore_vm_cleanup => ['backup/x']],
        [restore_container_init => ['backup/x', 'gb', {}]],
        [restore_container_cleanup => ['backup/x', 'gb', {}]],
    );
    for my $c (@calls) {
        my ($m, $args) = @$c;
        my @r = $p->$m(@$args);
    }
    my $reqs = recorded();
    is(scalar(@$reqs), scalar(@calls), 'one process per call');
    my %norm = (
        job_init => [1733100000],
        backup_init => [100, 'qemu', 1733100001],
        backup_cleanup => [100, 'qemu', 0, { error => 'x' }],
    );
    my $want; # the echo fake answers session = sent + 1; its canned replies carry none
    my %canned = (restore_get_mechanism => 1, archive_get_guest_config => 1);
    for my $i (0 .. $#calls) {
        my ($m, $args) = @{ $calls[$i] };
        my $req = $reqs->[$i];
        is($req->{method}, $m, "$m: method");
        is_deeply($req->{args}, $norm{$m} // $args, "$m: args");
        is($req->{storeid}, 'gb', "$m: storeid");
        is_deeply($req->{scfg}, $scfg, "$m: scfg");
        is($req->{session}, $want, "$m: the session of the last reply that had one");
        $want = ($want // 0) + 1 if !$canned{$m};
    }
};

subtest 'results' => sub {
    use_fake('echo.pl');
    my $p = provider();
    is_deeply([$p->restore_get_mechanism('backup/x')], ['qemu-img', 'qemu'], 'list result');
    is($p->archive_get_guest_config('backup/x'), "name: gr\xc3\xbcn\n", 'config text as bytes');
    is($p->{session}, undef, 'canned replies carry no session: none stored');
    my $r = $p->job_init(1);
    is($r->{request}{method}, 'job_init', 'hash result');
    is($p->{session}, 1, 'stored');
};

subtest 'log lines reach the log function' => sub {
    use_fake('echo.pl');
    @logged = ();
    my $p = provider();
    $p->_forward('logs');
    is_deeply(\@logged, [['info', 'one'], ['warn', 'two'], ['err', "dr\xc3\xaai"]], 'in order');
};

subtest 'a forked child uses the session (backup_container in run_in_userns)' => sub {
    use_fake('echo.pl');
    my $p = provider();
    $p->backup_init(100, 'lxc', 1);
    $p->backup_container_prepare(100, {});
    is($p->{session}, 2, 'parent session');
    pipe(my $r, my $w) or die "pipe: $!";
    my $pid = fork() // die "fork: $!";
    if (!$pid) {
        close($r);
        my $res = eval { $p->backup_container(100, '', [], {}) };
        print $w JSON::PP->new->canonical->encode({ res => $res, err => $@, session => $p->{session} });
        close($w);
        POSIX::_exit(0);
    }
    close($w);
    my $got = JSON::PP->new->decode(do { local $/; <$r> });
    waitpid($pid, 0);
    is($got->{err}, '', 'child call worked');
    is($got->{res}{request}{session}, 2, 'the child sent the parent\'s session');
    is($got->{session}, 3, 'the child stored the reply session in its copy');
    is($p->{session}, 2, 'the parent does not see it (Base.pm: "changes to $self ... not visible")');
    my $res = $p->backup_cleanup(100, 'lxc', 1, {});
    is($res->{request}{session}, 2, 'backup_cleanup sends the parent\'s session');
};

subtest 'errors die with one line' => sub {
    use_fake('dead.sh');
    my $p = provider();
    ok(!eval { $p->job_init(1); 1 }, 'dies');
    is($@, "guestbackup: service died (exit 1): boom\n", 'message');
    use_fake('echo.pl');
    ok(!eval { $p->_forward('fail'); 1 }, 'error reply dies');
    is($@, "backup/100/x does not exist\n", '"$message\n"');
};

done_testing();
