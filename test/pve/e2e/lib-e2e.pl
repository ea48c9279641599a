# Shared by the end-to-end tests: the real `guestbackup pve-call` (bin/guestbackup of this
# checkout unless GUESTBACKUP_BIN is set) driven through the shim exactly as Proxmox does.
# A test is skipped only when the service answers UNSUPPORTED or "unknown method"; a missing
# tool or any other error fails it.
use strict;
use warnings;
use FindBin;
use File::Temp qw(tempdir);
use Test::More;

use PVE::GuestBackup::Call;
use PVE::Storage::Custom::GuestBackupPlugin;

our $ROOT = "$FindBin::Bin/../../..";
$ENV{GUESTBACKUP_BIN} //= "$ROOT/bin/guestbackup";
our $TMP = tempdir(CLEANUP => 1);
our $PLUGIN = 'PVE::Storage::Custom::GuestBackupPlugin';
our $STOREID = 'gb';
our @LOG; # what the service logged, [level, message]

# gb(sub { ... }, 'what'): run one shim call; on UNSUPPORTED / unknown method skip the rest of the enclosing SKIP block.
sub gb {
    my ($code, $what) = @_;
    my @r = wantarray ? eval { $code->() } : (scalar eval { $code->() });
    return wantarray ? @r : $r[0] if !$@;
    my $err = $@;
    if ($PVE::GuestBackup::Call::LAST_ERROR_CODE eq 'UNSUPPORTED' || $err =~ /unknown method/i) {
        chomp($err);
        skip("guestbackup pve-call does not implement $what yet: $err", 1);
    }
    die "$what: $err";
}

sub run_ok {
    my (@cmd) = @_;
    my $out = `@cmd 2>&1`;
    is($?, 0, "@cmd") or diag($out);
    return $out;
}

sub need {
    my ($cmd) = @_;
    system("command -v $cmd >/dev/null 2>&1") == 0 or BAIL_OUT("$cmd is missing: make deps");
}

sub log_function { return sub { push @LOG, [@_] } } # vzdump: sub { debugmsg($_[0], $_[1]) }

1;
