package PVE::Storage::Plugin;

# TEST STAND-IN, never installed: the few bits of pve-storage src/PVE/Storage/Plugin.pm that
# guestbackup's shim inherits or that the tests call, with the real signatures. The real class
# is a PVE::SectionConfig with ~80 methods; the shim overrides every one it relies on.

use strict;
use warnings;

sub new_backup_provider {
    my ($class, $scfg, $storeid, $log_function) = @_;
    die "implement me if enabling the feature 'backup-provider' in plugindata()->{features}\n";
}

sub get_volume_notes {
    my ($class, $scfg, $storeid, $volname, $timeout) = @_;
    die "volume notes are not supported for $class";
}

1;
