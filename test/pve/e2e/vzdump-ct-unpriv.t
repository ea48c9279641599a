#!/usr/bin/perl
# An unprivileged container backup under Proxmox's real conditions (pve-container
# src/PVE/VZDump/LXC.pm::archive): backup_container_prepare as root with 'backup-user-id' the
# container's mapped root, then backup_container in a forked child inside a new user namespace
# mapped "0 100000 65536" (what PVE::LXC::Namespaces::run_in_userns does), so the service runs
# as host uid 100000. Then backup_cleanup as root, and a restore as
# src/PVE/LXC/Create.pm::restore_external_archive calls it.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/../lib", "$FindBin::Bin/../../../pve";
use Test::More;
use POSIX ();
use File::Find ();

our ($ROOT, $TMP, $PLUGIN, $STOREID, @LOG);
require "$FindBin::Bin/lib-e2e.pl";

need($_) for qw(tar diff setfacl getfacl);
plan(skip_all => 'needs root (writes another process\'s uid_map)') if $> != 0;

my $UID = 100000;
my $SYS_unshare = 272; # x86_64
my $CLONE_NEWUSER = 0x10000000;
plan(skip_all => 'the unshare syscall number is x86_64\'s') if (POSIX::uname())[4] ne 'x86_64';

# The child runs guestbackup as uid 100000: no tsx (its cache would be root's), only dist/.
my $entry = "$ROOT/dist/cli/bin.js";
my $stale = !-f $entry
    || `find '$ROOT/src' -name '*.ts' -newer '$entry' -print -quit` ne '';
BAIL_OUT("dist/ is missing or older than src/: build it first (npx tsc -p tsconfig.build.json, "
    . "or make test)") if $stale;

chmod(0711, $TMP) or die "$TMP: $!"; # the mapped root must reach the rootfs and the store
my $store = "$TMP/store";
mkdir($store, 0700) or die "$store: $!";
chmod(0700, $store);
# zstd: the frames and their index are written by the mapped root as well.
my $scfg = { type => 'guestbackup', path => $store, 'gb-lxc-compress' => 'zstd' };

# a container tree owned by the shifted id range (passes check_tar_archive)
my $rootfs = "$TMP/rootfs";
mkdir($rootfs, 0755);
mkdir("$rootfs/$_", 0755) for qw(sbin etc tmp var var/tmp home home/u);
for my $f (qw(sbin/init etc/hostname etc/passwd etc/group etc/os-release a b c d home/u/f tmp/junk)) {
    open(my $fh, '>', "$rootfs/$f") or die "$rootfs/$f: $!";
    print $fh "$f\n";
    close($fh);
}
chmod(0640, "$rootfs/etc/group");
system('chown', '-R', "$UID:$UID", $rootfs) == 0 or die 'chown';
system('chown', '-R', ($UID + 5) . ':' . ($UID + 5), "$rootfs/home/u") == 0 or die 'chown';

sub tree {
    my ($dir) = @_;
    my $out = `cd '$dir' && find . -printf '%U %G %m %p\\n' | sort`;
    die "find $dir" if $?;
    return $out;
}

sub acl_of {
    my ($path) = @_;
    return scalar(`getfacl -c -n -p '$path' 2>&1`);
}

SKIP: {
    gb(sub { $PLUGIN->activate_storage($STOREID, $scfg, {}) }, 'activate_storage');
    my $p = $PLUGIN->new_backup_provider($scfg, $STOREID, log_function());
    my $start = time();
    gb(sub { $p->job_init($start) }, 'job_init');
    my $init = gb(sub { $p->backup_init(102, 'lxc', $start) }, 'backup_init');
    my $volname = "backup/$init->{'archive-name'}";
    my $dir = "$store/$init->{'archive-name'}";
    is(gb(sub { $p->backup_get_mechanism(102, 'lxc') }, 'backup_get_mechanism'), 'directory',
        'mechanism');

    my $info = { directory => $rootfs, sources => ['.'], 'backup-user-id' => $UID,
        'firewall-config' => "[OPTIONS]\nenable: 1\n" };
    gb(sub { $p->backup_container_prepare(102, $info) }, 'backup_container_prepare');
    like(acl_of($store), qr/^user:$UID:--x$/m, 'the store root: search for the mapped root');
    like(acl_of("$store/102"), qr/^user:$UID:--x$/m, 'the guest dir: search for the mapped root');
    my $conf = "arch: amd64\nhostname: e2e\nrootfs: local:102/vm-102-disk-0.raw,size=1G\n"
        . "unprivileged: 1\nlxc.idmap: u 0 100000 65536\n";

    # run_in_userns: a forked child in a new user namespace, uid/gid 0 mapped to 100000
    pipe(my $r1, my $w1) or die "pipe: $!";
    pipe(my $r2, my $w2) or die "pipe: $!";
    pipe(my $er, my $ew) or die "pipe: $!";
    my $pid = fork() // die "fork: $!";
    if (!$pid) {
        close($r1);
        close($w2);
        close($er);
        my $err = '';
        if (syscall($SYS_unshare, $CLONE_NEWUSER) != 0) {
            $err = "unshare: $!";
        } else {
            syswrite($w1, 'u');
            close($w1);
            sysread($r2, my $b, 1);
            POSIX::setgid(0);
            POSIX::setuid(0);
            eval { $p->backup_container(102, $conf, ['/tmp/?*'], $info) };
            $err = $@;
        }
        print $ew $err;
        close($ew);
        POSIX::_exit(0);
    }
    close($w1);
    close($r2);
    close($ew);
    sysread($r1, my $b, 1);
    for (['uid_map', "0 $UID 65536\n"], ['gid_map', "0 $UID 65536\n"]) {
        open(my $f, '>', "/proc/$pid/$_->[0]") or die "/proc/$pid/$_->[0]: $!";
        print $f $_->[1];
        close($f) or die "/proc/$pid/$_->[0]: $!";
    }
    syswrite($w2, 'g');
    close($w2);
    my $child_err = do { local $/; <$er> };
    waitpid($pid, 0);
    is($child_err, '', 'backup_container in the user namespace');

    my ($archive) = grep { -e } map { "$dir/archive.$_" } qw(tar.zst tar sqfs);
    my @st = stat($archive // "$dir/archive.tar");
    is($st[4] // -1, $UID, 'the archive was written by host uid 100000');
    my $list = gb(sub { $PLUGIN->list_volumes($STOREID, $scfg, 102, ['backup']) }, 'list_volumes');
    my ($vol) = grep { $_->{volid} eq "$STOREID:$volname" } @$list;
    is($vol->{subtype} // '', 'lxc', 'listed as lxc before backup_cleanup');

    my $clean = gb(sub { $p->backup_cleanup(102, 'lxc', 1, {}) }, 'backup_cleanup');
    ok(($clean->{stats}{'archive-size'} // 0) > 0, 'archive-size');
    my @d = stat($dir);
    is(sprintf('%d:%d %o', $d[4], $d[5], $d[2] & 07777), '0:0 700', 'the backup dir is root\'s');
    opendir(my $dh, $dir) or die "$dir: $!";
    for my $f (grep { !/^\.\.?$/ } readdir($dh)) {
        my @f = lstat("$dir/$f");
        is(sprintf('%d:%d %o', $f[4], $f[5], $f[2] & 07777), '0:0 600', "$f is root's");
    }
    closedir($dh);
    unlike(acl_of($store), qr/^user:\d+:/m, 'no ACL entry left on the store root');
    unlike(acl_of("$store/102"), qr/^user:\d+:/m, 'no ACL entry left on the guest dir');
    gb(sub { $p->backup_handle_log_file(102, "$TMP/none.log") }, 'backup_handle_log_file');
    gb(sub { $p->job_cleanup() }, 'job_cleanup');

    # LXC/Create.pm::restore_external_archive, a new provider, with the extra $storeid
    my $rp = $PLUGIN->new_backup_provider($scfg, $STOREID, sub { note("$_[0]: $_[1]") });
    my ($m, $type) = gb(sub { $rp->restore_get_mechanism($volname, $STOREID) }, 'restore_get_mechanism');
    is($type, 'lxc', 'type');
    my $ri = gb(sub { $rp->restore_container_init($volname, $STOREID, {}) }, 'restore_container_init');
    my $out = "$TMP/restored";
    mkdir($out);
    if ($m eq 'tar') {
        ok(-f $ri->{'tar-path'}, 'tar-path is a file');
        # pve-container src/PVE/LXC/Create.pm tar_compression_option: the decompressor comes
        # from the path's suffix, and a path without `.tar[.ext]` dies "does not look like a
        # template archive".
        like($ri->{'tar-path'}, qr/\.tar(\.[^.]+)?$/, 'tar-path ends like a tar archive');
        run_ok("tar xpf '$ri->{'tar-path'}' -C $out --numeric-owner --anchored --exclude './dev/*'");
    } else {
        ok(-d $ri->{'archive-directory'}, 'archive-directory is a directory');
        run_ok("tar cpf - --numeric-owner -C '$ri->{'archive-directory'}' . "
            . "| tar xpf - --numeric-owner -C $out");
    }
    gb(sub { $rp->restore_container_cleanup($volname, $STOREID, {}) }, 'restore_container_cleanup');
    ok(!-e "$out/tmp/junk", 'the /tmp/?* exclude applied');
    unlink("$rootfs/tmp/junk");
    run_ok("diff -r $rootfs $out");
    # The archive holds the ids as the container sees them (tar ran in its namespace); pct
    # restore extracts it through lxc-usernsexec with the same map, giving back the host ids.
    (my $unshifted = tree($rootfs)) =~ s/^(\d+) (\d+) /($1 - $UID) . ' ' . ($2 - $UID) . ' '/gme;
    is(tree($out), $unshifted, 'owners (container ids 0 and 5) and modes come back');
}

done_testing();
