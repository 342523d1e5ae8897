"""``affinity cpu``: each worker on one CPU, and the connections that arrive
on a CPU handed to the worker that runs there.

How: a listener is opened as a group of sockets bound to one address with
SO_REUSEPORT, one per CPU of the machine (``group_size``), and the group is
given a classic BPF program (SO_ATTACH_REUSEPORT_CBPF) that picks, for each
new connection, the socket whose index is the number of the CPU the
connection arrived on (``PROGRAM``: load the CPU, return it; an index past
the group falls back to the kernel's hash, so a CPU that came later still
reaches a socket).  Worker n is pinned to the n-th CPU sockd may use and
polls that CPU's socket (``plan``); every socket of a CPU that no worker
runs on is polled by one worker too, so no connection waits for nobody.
The master holds every socket of the group for the listener's life, so a
worker that dies leaves its socket (and the connections queued on it) to
its replacement, which gets the same number, CPU and socket.

Why: a connection then stays on one CPU from the SYN to the close (the
kernel's part and the worker's), and no worker is woken for a client
another takes.  docs/performance.md section 2 has the measurements.

Pure: no I/O.  listeners.py opens the groups; serving.py pins and polls.
"""

import struct

# struct sock_filter {u16 code; u8 jt; u8 jf; u32 k} (linux/filter.h)
_BPF_LD_W_ABS = 0x00 | 0x00 | 0x20      # BPF_LD | BPF_W | BPF_ABS
_BPF_RET_A = 0x06 | 0x10                # BPF_RET | BPF_A
_SKF_AD_CPU = (-0x1000 + 36) & 0xFFFFFFFF   # SKF_AD_OFF + SKF_AD_CPU

# the group's program: "A = the CPU this packet is handled on; return A"
PROGRAM = struct.pack("=HBBI", _BPF_LD_W_ABS, 0, 0, _SKF_AD_CPU) + struct.pack("=HBBI", _BPF_RET_A, 0, 0, 0)
PROGRAM_LEN = 2                         # instructions

SO_ATTACH_REUSEPORT_CBPF = 51           # asm-generic/socket.h
MAX_GROUP = 1024                        # sockets per listener, at most


def group_size(cpus):
    """Sockets per listener for a machine of ``cpus`` CPUs (os.cpu_count():
    the CPU numbers a connection may arrive on run from 0 to cpus - 1)."""
    return max(1, min(int(cpus or 1), MAX_GROUP))


def cpu_of(number, allowed):
    """The CPU worker ``number`` (1, 2, ...) is pinned to: the n-th of the
    CPUs ``allowed`` (the master's affinity), round and round."""
    cpus = sorted(allowed)
    return cpus[(number - 1) % len(cpus)]


def plan(number, workers, allowed, size):
    """(cpu, indexes): the CPU worker ``number`` of ``workers`` runs on and
    the sockets of a group of ``size`` it polls: its own CPU's, and those of
    the CPUs no worker runs on that fall to it (index modulo ``workers``).
    Over workers 1..workers every index is polled by one worker at least."""
    cpu = cpu_of(number, allowed)
    pinned = {cpu_of(m, allowed) for m in range(1, workers + 1)}
    mine = [i for i in range(size)
            if i == cpu or (i not in pinned and i % workers == (number - 1) % workers)]
    return cpu, mine
