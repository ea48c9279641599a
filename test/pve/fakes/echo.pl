#!/usr/bin/perl
# Fake pve-call speaking protocol 1: appends each request line to $FAKE_RECORD, then answers by
# method. Storage list methods get the doc's shapes; 'logs' logs three lines first; 'fail'
# answers an error; 'chatty' writes 1 MiB to stderr before answering; anything else echoes the
# request with session = previous session + 1 (to test that the session is carried).
use strict;
use warnings;
use JSON::PP;

$| = 1;
my $json = JSON::PP->new->utf8->canonical;
print $json->encode({ guestbackup => '0.0.0-fake', protocol => 1 }), "\n";
my $line = <STDIN>;
my $rest = do { local $/; <STDIN> };
die "more than one request line\n" if defined($rest) && length($rest);
if (my $rec = $ENV{FAKE_RECORD}) {
    open(my $fh, '>>', $rec) or die "$rec: $!\n";
    print $fh $line;
    close($fh);
}
my $req = $json->decode($line);
my $m = $req->{method};
my $reply = sub { print $json->encode($_[0]), "\n"; exit 0 };
my %canned = (
    parse_volname => ['backup', 'qemu-100-x', 100, undef, undef, 0, 'directory'],
    path => ['/store/backup/qemu-100-x', 100, 'backup'],
    volume_size_info => [4096, 'directory', 1024, undef, 1700000000],
    status => [1000, 600, 400, 1],
    restore_get_mechanism => ['qemu-img', 'qemu'],
    check_connection => 1,
    archive_get_guest_config => "name: gr\x{fc}n\n",
);
$reply->({ result => $canned{$m} }) if exists($canned{$m});
if ($m eq 'logs' || $m eq 'prune_backups') {
    for my $l (['info', 'one'], ['warn', 'two'], ['err', "dr\x{ea}i"]) {
        print $json->encode({ log => { level => $l->[0], message => $l->[1] } }), "\n";
    }
    $reply->({ result => 'done' });
}
$reply->({ error => { code => 'NOT_FOUND', message => 'backup/100/x does not exist' } })
    if $m eq 'fail';
$reply->({ error => { code => 'UNSUPPORTED', message => "unknown method $m" } })
    if $m eq 'unsupported';
if ($m eq 'chatty') {
    print STDERR ('x' x 1023) . "\n" for 1 .. 1024;
    print STDERR "last words\n";
}
$reply->({ result => { request => $req }, session => ($req->{session} // 0) + 1 });
