#!/usr/bin/perl
# perl -c of the shim modules, against the test stand-ins of the Proxmox classes.
use strict;
use warnings;
use FindBin;
use Test::More;

my $root = "$FindBin::Bin/../..";
for my $m (qw(
    PVE/GuestBackup/Call.pm
    PVE/Storage/Custom/GuestBackupPlugin.pm
    PVE/BackupProvider/Plugin/GuestBackup.pm
)) {
    my $out = `$^X -I $root/test/pve/lib -I $root/pve -c $root/pve/$m 2>&1`;
    is($?, 0, "perl -c $m") or diag($out);
    like($out, qr/syntax OK/, "$m: syntax OK");
}
done_testing();
