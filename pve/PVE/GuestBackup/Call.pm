package PVE::GuestBackup::Call;

# One method call of the Proxmox VE shim = one `guestbackup pve-call` process (the contract is
# docs/pve-protocol.md). This module holds the transport only: spawn, one request line, read
# greeting/log/final lines, collect stderr, wait, and the one-line errors of the doc.
# Perl 5 core modules and JSON::PP only: it is loaded by pvedaemon, pvestatd and vzdump.

use strict;
use warnings;

use Errno qw(EINTR EAGAIN EPIPE);
use IO::Handle;
use IPC::Open3 qw(open3);
use JSON::PP;
use POSIX qw(WNOHANG);
use Scalar::Util qw(blessed reftype);
use Symbol qw(gensym);
use Time::HiRes qw(time);

use constant PROTOCOL => 1;
use constant STORAGE_TIMEOUT => 120; # seconds, docs/pve-protocol.md "storage methods 120 s"
use constant STDERR_KEEP => 4096;    # "stderr is collected (last 4 KiB)"
use constant EXIT_GRACE => 10;       # seconds a process may take to exit after its final line

# The code of the last error reply ('' when the last call succeeded or died in the transport).
# Callers only die with "$message\n" (the doc); tests and the e2e driver read the code here.
our $LAST_ERROR_CODE = '';

my $json = JSON::PP->new->utf8->canonical->allow_nonref;

sub program { return $ENV{GUESTBACKUP_BIN} // '/usr/bin/guestbackup' }

# Storage methods must answer within 120 s; GUESTBACKUP_CALL_TIMEOUT (seconds) overrides it, for
# tests and slow storages. Provider methods have no overall timeout (backup_vm runs for hours).
sub storage_timeout { return $ENV{GUESTBACKUP_CALL_TIMEOUT} || STORAGE_TIMEOUT }

# Inputs from Proxmox are a mix of byte strings (file contents such as vzdump's guest config) and
# character strings (API parameters such as notes). Send both as UTF-8: a byte string that is
# valid UTF-8 is taken as such, any other byte string as Latin-1. Code and file handles cannot
# cross a process boundary (file-handle's 'next-dirty-region'): refuse them.
sub _prepare {
    my ($v, $method) = @_;
    my $r = ref($v);
    if ($r eq '') {
        return $v if !defined($v) || utf8::is_utf8($v) || $v !~ /[\x80-\xff]/;
        my $c = $v;
        utf8::decode($c);
        return $c;
    }
    return $v if blessed($v) && $v->isa('JSON::PP::Boolean');
    die "guestbackup: cannot forward a $r reference in $method\n"
        if blessed($v) || ($r ne 'HASH' && $r ne 'ARRAY');
    return [map { _prepare($_, $method) } @$v] if $r eq 'ARRAY';
    return { map { $_ => _prepare($v->{$_}, $method) } keys %$v };
}

# Results go back as character strings (like the JSON output Proxmox's PBS plugin decodes),
# except where Proxmox expects file contents: %$bytes_result methods return UTF-8 bytes.
sub _to_bytes {
    my ($v) = @_;
    my $r = ref($v);
    if ($r eq '') {
        utf8::encode($v) if defined($v) && utf8::is_utf8($v);
        return $v;
    }
    return [map { _to_bytes($_) } @$v] if $r eq 'ARRAY';
    return { map { $_ => _to_bytes($v->{$_}) } keys %$v } if $r eq 'HASH';
    return $v;
}

sub _kill {
    my ($st) = @_;
    return if $st->{reaped};
    kill('TERM', $st->{pid});
    my $until = time() + 2;
    while (time() < $until) {
        return _reaped($st) if waitpid($st->{pid}, WNOHANG) == $st->{pid};
        select(undef, undef, undef, 0.05);
    }
    kill('KILL', $st->{pid});
    waitpid($st->{pid}, 0);
    _reaped($st);
}

sub _reaped {
    my ($st) = @_;
    $st->{reaped} = 1;
    my $s = $?;
    # a signal is reported as a shell does: 128 + signal number
    $st->{exit} = ($s & 127) ? 128 + ($s & 127) : ($s >> 8);
}

sub _last_stderr_line {
    my ($st) = @_;
    my @lines = grep { /\S/ } split(/\n/, $st->{stderr});
    return @lines ? $lines[-1] : '(nothing on stderr)';
}

sub _malformed {
    my ($st, $line) = @_;
    _kill($st);
    die "guestbackup: malformed reply: " . substr($line, 0, 200) . "\n";
}

# One line of stdout. Returns 1 once the final line (result or error) has been seen.
sub _line {
    my ($st, $line) = @_;
    my $msg = eval { $json->decode($line) };
    _malformed($st, $line) if !defined($msg) || ref($msg) ne 'HASH';
    if (!$st->{greeted}) {
        _malformed($st, $line)
            if !defined($msg->{guestbackup}) || !defined($msg->{protocol}) || ref($msg->{protocol});
        if ($msg->{protocol} ne PROTOCOL) {
            _kill($st);
            die "guestbackup: protocol mismatch (plugin speaks " . PROTOCOL
                . ", guestbackup speaks $msg->{protocol})\n";
        }
        $st->{greeted} = 1;
        return 0;
    }
    if (exists($msg->{log})) {
        my $log = $msg->{log};
        _malformed($st, $line)
            if ref($log) ne 'HASH'
            || !defined($log->{level})
            || $log->{level} !~ /^(?:info|warn|err)$/
            || !defined($log->{message})
            || ref($log->{message});
        my $text = _to_bytes($log->{message});
        if ($st->{log}) {
            $st->{log}->($log->{level}, $text);
        } elsif ($log->{level} ne 'info') {
            warn "$text\n"; # storage methods: no log function (docs/pve-protocol.md)
        }
        return 0;
    }
    if (exists($msg->{error})) {
        my $e = $msg->{error};
        _malformed($st, $line)
            if ref($e) ne 'HASH' || !defined($e->{message}) || ref($e->{message});
        $st->{error} = $e;
        return 1;
    }
    if (exists($msg->{result})) {
        $st->{reply} = $msg;
        return 1;
    }
    _malformed($st, $line);
}

# call(method => ..., storeid => ..., scfg => ..., args => [...], session => ..., log => sub,
#      timeout => seconds or undef, bytes_result => bool)
# Returns the reply hash ({result => ..., session => ...}) or dies with one line.
sub call {
    my (%o) = @_;
    my $method = $o{method};
    $LAST_ERROR_CODE = '';
    my $request = {
        protocol => PROTOCOL,
        method => $method,
        storeid => $o{storeid},
        scfg => _prepare($o{scfg}, $method),
        args => _prepare($o{args} // [], $method),
        session => $o{session},
    };
    my $out_buf = $json->encode($request) . "\n";

    local $SIG{PIPE} = 'IGNORE'; # a service that exits early must not kill vzdump
    local $SIG{CHLD} = 'DEFAULT'; # waitpid must see our child

    my $bin = program();
    my ($in, $out, $err) = (undef, undef, gensym);
    my $pid = eval { open3($in, $out, $err, $bin, 'pve-call') };
    if (!$pid) {
        my $why = $@ =~ /failed: (.+?)(?: at \S+ line \d+\.?)?\s*$/s ? $1 : "$!";
        die "guestbackup: cannot run $bin: $why\n";
    }
    $_->blocking(0) for ($in, $out, $err);

    my $st = { pid => $pid, stderr => '', log => $o{log}, greeted => 0 };
    my $timeout = $o{timeout};
    my $ok = eval { _run($st, $method, $timeout, $in, $out, $err, $out_buf) };
    if (!$ok) {
        my $e = $@;
        _kill($st); # whatever went wrong (also a dying log function), never leave it running
        die $e;
    }
    if (my $e = $st->{error}) {
        $LAST_ERROR_CODE = $e->{code} // '';
        my $message = _to_bytes($e->{message});
        $message =~ s/\n.*//s; # one line
        die "$message\n";
    }
    my $reply = $st->{reply};
    $reply->{result} = _to_bytes($reply->{result}) if $o{bytes_result};
    return $reply;
}

# The select loop: writes the request (non-blocking, so a service that never reads cannot block
# us), reads stdout lines and stderr together (no pipe can fill up and deadlock), watches the
# deadline and whether the process still lives. Returns 1 once the final line is in and the
# process is reaped; dies otherwise.
sub _run {
    my ($st, $method, $timeout, $in, $out, $err, $out_buf) = @_;
    my $pid = $st->{pid};
    my $deadline = defined($timeout) ? time() + $timeout : undef;
    my ($out_open, $err_open, $in_open, $done) = (1, 1, 1, 0);
    my $partial = '';

    while (!$done && ($out_open || $err_open)) {
        my ($rin, $win) = ('', '');
        vec($rin, fileno($out), 1) = 1 if $out_open;
        vec($rin, fileno($err), 1) = 1 if $err_open;
        vec($win, fileno($in), 1) = 1 if $in_open;
        my $now = time();
        if ($deadline && $now >= $deadline) {
            _kill($st);
            die "guestbackup: no reply to $method within $timeout s\n";
        }
        my $wait = 0.25; # also the liveness tick of provider methods (no overall timeout)
        $wait = $deadline - $now if $deadline && $deadline - $now < $wait;
        my $n = select(my $rout = $rin, my $wout = $win, undef, $wait);
        if ($n < 0) {
            next if $! == EINTR;
            die "guestbackup: select failed: $!\n";
        }
        # a dead process is reported at once even if a grandchild keeps its pipes open
        # (once it is dead, the loop ends when the pipes hold nothing more to read)
        last if $n == 0 && $st->{reaped};
        _reaped($st) if !$st->{reaped} && waitpid($pid, WNOHANG) == $pid;
        next if $n <= 0;
        if ($in_open && vec($wout, fileno($in), 1)) {
            my $w = syswrite($in, $out_buf);
            if (defined($w)) {
                substr($out_buf, 0, $w, '');
            } elsif ($! != EAGAIN && $! != EINTR) {
                $out_buf = ''; # EPIPE: it died or refused its input; its exit tells why
            }
            if ($out_buf eq '') {
                close($in);
                $in_open = 0;
            }
        }
        if ($err_open && vec($rout, fileno($err), 1)) {
            my $r = sysread($err, my $chunk, 65536);
            if (defined($r) && $r == 0) {
                $err_open = 0;
            } elsif (defined($r)) {
                _keep_stderr($st, $chunk);
            }
        }
        if ($out_open && vec($rout, fileno($out), 1)) {
            my $r = sysread($out, my $chunk, 65536);
            if (defined($r) && $r == 0) {
                $out_open = 0;
            } elsif (defined($r)) {
                $partial .= $chunk;
                while (!$done && $partial =~ s/^([^\n]*)\n//) {
                    $done = _line($st, $1);
                }
            }
        }
    }
    close($in) if $in_open;

    if (!$done) {
        # stdout closed, or the process exited, before the final line
        _wait_exit($st);
        _drain_stderr($st, $err) if $err_open;
        die "guestbackup: service died (exit $st->{exit}): " . _last_stderr_line($st) . "\n";
    }
    # The final line is in: let it exit (its exit code does not change the reply), never hang.
    close($out);
    close($err);
    _wait_exit($st);
    return 1;
}

sub _wait_exit {
    my ($st) = @_;
    my $until = time() + EXIT_GRACE;
    while (!$st->{reaped} && time() < $until) {
        if (waitpid($st->{pid}, WNOHANG) == $st->{pid}) {
            _reaped($st);
        } else {
            select(undef, undef, undef, 0.02);
        }
    }
    _kill($st);
}

sub _keep_stderr {
    my ($st, $chunk) = @_;
    $st->{stderr} .= $chunk;
    substr($st->{stderr}, 0, length($st->{stderr}) - STDERR_KEEP, '')
        if length($st->{stderr}) > STDERR_KEEP;
}

sub _drain_stderr {
    my ($st, $err) = @_;
    for (1 .. 100) {
        my $rin = '';
        vec($rin, fileno($err), 1) = 1;
        last if select(my $rout = $rin, undef, undef, 0.1) <= 0;
        my $r = sysread($err, my $chunk, 65536);
        last if !$r;
        _keep_stderr($st, $chunk);
    }
}

1;
