#!/usr/bin/perl
# vzdump-ct.t with gb-lxc-backup-mode squashfs: pct restore gets an `archive-directory`, a
# squashfuse mount that the restore holder keeps until restore_container_cleanup.
use strict;
use warnings;
use FindBin;
$ENV{GB_E2E_LXC_MODE} = 'squashfs';
my $ok = do "$FindBin::Bin/vzdump-ct.t";
die($@ || $! || 'vzdump-ct.t failed') if !$ok && ($@ || $!);
