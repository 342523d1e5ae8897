"""steering.py is pure: the group's BPF program as bytes, which CPU each
worker runs on and which sockets of a group it polls (every socket polled
by some worker, whatever the counts)."""

import struct

from hypothesis import given
from hypothesis import strategies as st

from sockd import steering


def test_the_program_loads_the_cpu_and_returns_it():
    insns = [struct.unpack("=HBBI", steering.PROGRAM[i:i + 8]) for i in range(0, len(steering.PROGRAM), 8)]
    assert len(insns) == steering.PROGRAM_LEN == 2
    # BPF_LD|BPF_W|BPF_ABS of SKF_AD_OFF (-0x1000) + SKF_AD_CPU (36); BPF_RET|BPF_A
    assert insns == [(0x20, 0, 0, 0xFFFFF024), (0x16, 0, 0, 0)]


def test_group_size_is_the_cpu_count_within_bounds():
    assert steering.group_size(2) == 2
    assert steering.group_size(None) == 1
    assert steering.group_size(0) == 1
    assert steering.group_size(100000) == steering.MAX_GROUP


def test_workers_take_the_allowed_cpus_in_turn():
    assert [steering.cpu_of(n, {0, 1}) for n in (1, 2, 3, 4)] == [0, 1, 0, 1]
    assert [steering.cpu_of(n, {5, 2}) for n in (1, 2, 3)] == [2, 5, 2]


def test_two_workers_on_two_cpus_poll_one_socket_each():
    assert steering.plan(1, 2, {0, 1}, 2) == (0, [0])
    assert steering.plan(2, 2, {0, 1}, 2) == (1, [1])


def test_cpus_no_worker_runs_on_fall_to_the_workers_in_turn():
    # 2 workers on a 4-CPU machine, sockd allowed all four
    assert steering.plan(1, 2, {0, 1, 2, 3}, 4) == (0, [0, 2])
    assert steering.plan(2, 2, {0, 1, 2, 3}, 4) == (1, [1, 3])
    # sockd allowed only CPUs 2 and 3: connections still arrive on 0 and 1
    assert steering.plan(1, 2, {2, 3}, 4) == (2, [0, 2])
    assert steering.plan(2, 2, {2, 3}, 4) == (3, [1, 3])


def test_more_workers_than_cpus_share_a_cpus_socket():
    assert steering.plan(3, 3, {0, 1}, 2) == (0, [0])


@given(workers=st.integers(1, 40), allowed=st.sets(st.integers(0, 63), min_size=1, max_size=64),
       size=st.integers(1, 64))
def test_every_socket_of_a_group_is_polled_by_some_worker(workers, allowed, size):
    polled = set()
    for n in range(1, workers + 1):
        cpu, mine = steering.plan(n, workers, allowed, size)
        assert cpu in allowed
        # its own CPU's socket, when the group has one for it
        assert (cpu in mine) == (cpu < size)
        assert all(0 <= i < size for i in mine) and mine == sorted(set(mine))
        polled.update(mine)
    assert polled == set(range(size))
