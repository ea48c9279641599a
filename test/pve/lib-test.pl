# Shared by the .t files: paths and helpers. `do`ne, not a module, to stay out of pve/.
use strict;
use warnings;
use FindBin;
use File::Temp qw(tempdir);
use JSON::PP;

our $FAKES = "$FindBin::Bin/fakes";
our $TMP = tempdir(CLEANUP => 1);

# The requests the echo fake received, decoded, in order; clears the record.
sub recorded {
    my $file = "$TMP/record";
    open(my $fh, '<', $file) or return [];
    my @r = map { JSON::PP->new->utf8->decode($_) } <$fh>;
    close($fh);
    unlink($file);
    return \@r;
}

sub use_fake {
    my ($name) = @_;
    $ENV{GUESTBACKUP_BIN} = "$FAKES/$name";
    $ENV{FAKE_RECORD} = "$TMP/record";
    $ENV{FAKE_PIDFILE} = "$TMP/pid";
    unlink("$TMP/pid", "$TMP/record");
}

sub fake_pid {
    open(my $fh, '<', "$TMP/pid") or return undef;
    my $pid = <$fh>;
    chomp($pid);
    return $pid;
}

1;
