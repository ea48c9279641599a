package PVE::BackupProvider::Plugin::GuestBackup;

# guestbackup's backup provider: every method of pve-storage
# src/PVE/BackupProvider/Plugin/Base.pm forwarded, unchanged, to `guestbackup pve-call`
# (docs/pve-protocol.md). The service is stateless between calls; what it needs later travels in
# the reply's `session`, kept in $self->{session} and sent back with the next call.

use strict;
use warnings;

use PVE::GuestBackup::Call;

use base qw(PVE::BackupProvider::Plugin::Base);

# Called only by our storage plugin's new_backup_provider; the signature is Base.pm's.
sub new {
    my ($class, $storage_plugin, $scfg, $storeid, $log_function) = @_;
    return bless {
        'storage-plugin' => $storage_plugin,
        scfg => $scfg,
        storeid => $storeid,
        # vzdump passes sub { debugmsg($_[0], $_[1]) } (pve-manager PVE/VZDump.pm); restore and
        # extract_vzdump_config pass a printing one. Never undef here: the service may log.
        log_function => $log_function // sub { print STDERR "$_[0]: $_[1]\n" },
        session => undef,
    }, $class;
}

# How each method's arguments are normalised for JSON (the doc: vmids and times are numbers,
# "a Perl boolean as 0/1"). 'i' = integer when it looks like one, 'b' = 0/1, '' = as it is.
# Extra arguments that callers add are forwarded as they come: pve-container
# src/PVE/LXC/Create.pm passes $storeid to restore_get_mechanism, restore_container_init,
# restore_container_cleanup and archive_get_firewall_config; PVE::Storage::extract_vzdump_config
# passes $storeid to archive_get_guest_config.
my $METHODS = {
    provider_name => [],
    # pve-manager PVE/VZDump.pm::exec_backup: job_init before the job-start hook, job_cleanup
    # after all guests (and again, in an eval, on the error path)
    job_init => ['i'],
    job_cleanup => [],
    # VZDump.pm::exec_backup_task: backup_init, ..., backup_cleanup, backup_handle_log_file
    backup_init => ['i', '', 'i'],
    backup_cleanup => ['i', '', 'b', ''],
    backup_handle_log_file => ['i', ''],
    # qemu-server PVE/VZDump/QemuServer.pm::archive_external, pve-container PVE/VZDump/LXC.pm
    backup_get_mechanism => ['i', ''],
    backup_vm_query_incremental => ['i', ''],
    backup_vm => ['i', '', '', ''],
    backup_container_prepare => ['i', ''],
    # run in a forked child (pve-container PVE/LXC/Namespaces.pm::run_in_userns): $self is a
    # copy, so a session the reply carries is not seen by the parent's later calls
    backup_container => ['i', '', '', ''],
    # qemu-server PVE/QemuServer.pm::restore_external_archive, pve-container LXC/Create.pm
    restore_get_mechanism => [],
    archive_get_guest_config => [],
    archive_get_firewall_config => [],
    restore_vm_init => [],
    restore_vm_cleanup => [],
    restore_vm_volume_init => [],
    restore_vm_volume_cleanup => [],
    restore_container_init => [],
    restore_container_cleanup => [],
};

# Methods whose result Proxmox treats as file contents (written to the guest's config and
# firewall files, parsed like a file read): returned as UTF-8 bytes, not character strings.
my $BYTES_RESULT = { archive_get_guest_config => 1, archive_get_firewall_config => 1 };

# Methods returning a Perl list (the doc: "returns a JSON array; the shim returns it as a list").
my $LIST_RESULT = { restore_get_mechanism => 1 };

sub _normalise {
    my ($types, @args) = @_;
    for my $i (0 .. $#args) {
        my $t = $types->[$i] // '';
        my $v = $args[$i];
        if ($t eq 'i') {
            $args[$i] = 0 + $v if defined($v) && $v =~ /^-?\d+$/;
        } elsif ($t eq 'b') {
            $args[$i] = $v ? 1 : 0;
        }
    }
    return \@args;
}

sub _forward {
    my ($self, $method, @args) = @_;
    my $reply = PVE::GuestBackup::Call::call(
        method => $method,
        storeid => $self->{storeid},
        scfg => $self->{scfg},
        args => _normalise($METHODS->{$method}, @args),
        session => $self->{session},
        log => $self->{log_function},
        timeout => undef, # no overall timeout; the process's liveness is watched
        bytes_result => $BYTES_RESULT->{$method},
    );
    $self->{session} = $reply->{session} if exists($reply->{session});
    my $result = $reply->{result};
    if ($LIST_RESULT->{$method}) {
        die "guestbackup: malformed reply: $method returned no list\n"
            if ref($result) ne 'ARRAY';
        return @$result;
    }
    return $result;
}

# One sub per method, each a plain forward.
for my $method (sort keys %$METHODS) {
    no strict 'refs';
    *{$method} = sub { my $self = shift; return $self->_forward($method, @_) };
}

1;
