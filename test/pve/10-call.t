#!/usr/bin/perl
# PVE::GuestBackup::Call against fake services (test/pve/fakes): the one-line errors of
# docs/pve-protocol.md, log forwarding, stderr collection, timeouts and liveness.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib", "$FindBin::Bin/../../pve";
use Test::More;
use Time::HiRes qw(time);

use PVE::GuestBackup::Call;

our ($FAKES, $TMP);
require "$FindBin::Bin/lib-test.pl";

sub call { PVE::GuestBackup::Call::call(storeid => 'gb', scfg => { path => '/x' }, @_) }

sub dies_with {
    my ($name, $re, @call) = @_;
    my $ok = eval { call(@call); 1 };
    ok(!$ok, "$name: dies");
    like($@, $re, "$name: message");
    unlike($@ // '', qr/\n./, "$name: one line");
}

subtest 'cannot start' => sub {
    $ENV{GUESTBACKUP_BIN} = "$TMP/does-not-exist";
    dies_with(
        'missing program',
        qr{^guestbackup: cannot run \Q$TMP\E/does-not-exist: No such file or directory\n\z},
        method => 'status',
    );
};

subtest 'dead service' => sub {
    use_fake('dead.sh');
    dies_with('exit 1', qr/^guestbackup: service died \(exit 1\): boom\n\z/, method => 'status');
};

subtest 'hung service is killed at the timeout' => sub {
    use_fake('hang.sh');
    my $t0 = time();
    dies_with(
        'timeout',
        qr/^guestbackup: no reply to status within 0\.5 s\n\z/,
        method => 'status',
        timeout => 0.5,
    );
    my $took = time() - $t0;
    ok($took >= 0.5 && $took < 5, "took ${took}s");
    my $pid = fake_pid();
    ok($pid, 'the fake wrote its pid');
    ok(!kill(0, $pid), 'the process is gone (killed and reaped)');
};

subtest 'timeout from GUESTBACKUP_CALL_TIMEOUT' => sub {
    local $ENV{GUESTBACKUP_CALL_TIMEOUT} = 0.3;
    is(PVE::GuestBackup::Call::storage_timeout(), 0.3, 'override');
    delete local $ENV{GUESTBACKUP_CALL_TIMEOUT};
    is(PVE::GuestBackup::Call::storage_timeout(), 120, 'default 120 s');
};

subtest 'a service that never reads a large request still times out' => sub {
    use_fake('noread.sh');
    dies_with(
        'noread',
        qr/^guestbackup: no reply to backup_vm within 0\.5 s\n\z/,
        method => 'backup_vm',
        args => [100, 'x' x (1024 * 1024)],
        timeout => 0.5,
    );
};

subtest 'malformed reply' => sub {
    use_fake('malformed.sh');
    dies_with(
        'not json',
        qr/^guestbackup: malformed reply: this is not json \{\n\z/,
        method => 'status',
    );
};

subtest 'protocol mismatch' => sub {
    use_fake('mismatch.sh');
    dies_with(
        'greeting',
        qr/^guestbackup: protocol mismatch \(plugin speaks 1, guestbackup speaks 2\)\n\z/,
        method => 'status',
    );
};

subtest 'error reply' => sub {
    use_fake('echo.pl');
    dies_with('fail', qr/^backup\/100\/x does not exist\n\z/, method => 'fail');
    is($PVE::GuestBackup::Call::LAST_ERROR_CODE, 'NOT_FOUND', 'the code is kept for tests');
    call(method => 'status');
    is($PVE::GuestBackup::Call::LAST_ERROR_CODE, '', 'cleared by the next call');
};

subtest 'log lines are forwarded in order, before the result' => sub {
    use_fake('echo.pl');
    my @seen;
    my $reply = call(method => 'logs', log => sub { push @seen, [@_] });
    push @seen, ['result', $reply->{result}];
    is_deeply(
        \@seen,
        [['info', 'one'], ['warn', 'two'], ['err', "dr\xc3\xaai"], ['result', 'done']],
        'order; messages as UTF-8 bytes',
    );
};

subtest 'without a log function, warn and err lines are warned, info dropped' => sub {
    use_fake('echo.pl');
    my @warned;
    local $SIG{__WARN__} = sub { push @warned, $_[0] };
    call(method => 'logs');
    is_deeply(\@warned, ["two\n", "dr\xc3\xaai\n"], 'warned');
};

subtest 'request line' => sub {
    use_fake('echo.pl');
    my $bytes = "gr\xc3\xbcn"; # a config file's bytes
    my $chars = "gr\x{fc}n";   # an API parameter
    my $reply = call(method => 'x', args => [100, undef, { a => [1] }, $bytes, $chars]);
    my ($req) = @{ recorded() };
    is_deeply(
        $req,
        {
            protocol => 1,
            method => 'x',
            storeid => 'gb',
            scfg => { path => '/x' },
            args => [100, undef, { a => [1] }, "gr\x{fc}n", "gr\x{fc}n"],
            session => undef,
        },
        'one JSON line; bytes and characters both arrive as UTF-8',
    );
    is($reply->{session}, 1, 'reply session');
};

subtest 'code references are refused' => sub {
    use_fake('echo.pl');
    dies_with(
        'code ref',
        qr/^guestbackup: cannot forward a CODE reference in backup_vm\n\z/,
        method => 'backup_vm',
        args => [100, '', { 'drive-scsi0' => { 'next-dirty-region' => sub { } } }],
    );
    is_deeply(recorded(), [], 'no process was started');
};

subtest 'stderr is read while waiting (no deadlock), last 4 KiB kept' => sub {
    use_fake('echo.pl');
    my $reply = call(method => 'chatty', timeout => 20);
    is($reply->{session}, 1, 'answered after 1 MiB on stderr');
};

subtest 'a dead process is seen at once, even when a grandchild holds its pipes' => sub {
    use_fake('orphan.sh');
    my $t0 = time();
    dies_with(
        'orphan',
        qr/^guestbackup: service died \(exit 3\): orphaned\n\z/,
        method => 'backup_vm', # no timeout: liveness only
    );
    my $took = time() - $t0;
    ok($took < 10, "reported after ${took}s, not after the grandchild's 30 s");
    my $pid = fake_pid();
    kill('KILL', $pid) if $pid;
};

subtest 'list results and bytes_result' => sub {
    use_fake('echo.pl');
    my $r = call(method => 'archive_get_guest_config', bytes_result => 1);
    is($r->{result}, "name: gr\xc3\xbcn\n", 'file contents come back as UTF-8 bytes');
    $r = call(method => 'archive_get_guest_config');
    is($r->{result}, "name: gr\x{fc}n\n", 'otherwise characters');
};

done_testing();
