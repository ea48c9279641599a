#!/usr/bin/perl
# vzdump-ct.t with gb-lxc-compress zstd, gzip and lzo, each in its own run: the restore's
# tar-path carries the archive's suffix, so pct restore picks the decompressor (pve-container
# src/PVE/LXC/Create.pm, tar_compression_option) and extracts the compressed archive unchanged.
use strict;
use warnings;
use FindBin;
use Test::More;

for my $c (qw(zstd gzip lzo)) {
    local $ENV{GB_E2E_LXC_COMPRESS} = $c;
    my $out = qx{$^X "$FindBin::Bin/vzdump-ct.t" 2>&1};
    ok($? == 0 && $out !~ /^not ok/m, "vzdump-ct.t with gb-lxc-compress $c") or diag($out);
}

done_testing();
