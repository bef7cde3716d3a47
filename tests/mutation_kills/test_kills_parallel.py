"""Kill tests for rlir/parallel.py (docs/mutation.md): the collectives of a rank among several, with
torch.distributed's calls replaced by fakes that play the other ranks; joining a job under torchrun's environment
(the process group's arguments recorded, and one real one-process gloo group); the device a config names."""
import io
import os
import socket
import sys
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist

from rlir import parallel as par
from rlir.parallel import Parallel
from rlir.schema import ConfigError

TORCHRUN = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_USE_AGENT_STORE",
            "TORCHELASTIC_RESTART_COUNT")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def torchrun_env(monkeypatch):
    """torchrun's environment for rank 1 of 2, local rank 3, agent store not offered."""
    for name in TORCHRUN:
        monkeypatch.delenv(name, raising=False)
    env = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "3", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(_free_port())}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    # a store client finds no master within 5 s, not torch's 300 s (a wrong branch fails fast)
    store = dist.TCPStore
    monkeypatch.setattr(dist, "TCPStore", lambda *a, **kw: store(*a, **{"timeout": timedelta(seconds=5), **kw}))
    return env


@pytest.fixture
def recorded_init(monkeypatch):
    """dist.init_process_group recorded instead of run; no group is initialized."""
    calls = []
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend, **kw: calls.append((backend, kw)))
    return calls


# ---- Parallel -------------------------------------------------------------------------------------------

def test_a_plain_process_is_rank_0_of_1():
    p = Parallel()
    assert (p.rank, p.world_size, p.local_rank) == (0, 1, 0)
    assert not p.distributed and p.is_main
    assert Parallel.current() == Parallel()  # no group initialized
    assert Parallel(1, 2).distributed and not Parallel(1, 2).is_main and Parallel(0, 2).is_main


def test_current_reads_the_group_and_local_rank(monkeypatch):
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_rank", lambda: 2)
    monkeypatch.setattr(dist, "get_world_size", lambda: 4)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert Parallel.current() == Parallel(2, 4, 1)
    monkeypatch.delenv("LOCAL_RANK")
    assert Parallel.current() == Parallel(2, 4, 2)  # without LOCAL_RANK: the rank


def test_all_reduce_sums_or_maxes_a_copy(monkeypatch):
    ops = []

    def fake(t, op):  # the other rank holds 10 in every entry
        ops.append(op)
        other = torch.full_like(t, 10.0)
        t.copy_(t + other if op == dist.ReduceOp.SUM else torch.maximum(t, other))

    monkeypatch.setattr(dist, "all_reduce", fake)
    t = torch.tensor([1.0, 20.0])
    assert torch.equal(Parallel(0, 2).all_reduce(t), torch.tensor([11.0, 30.0]))
    assert torch.equal(Parallel(0, 2).all_reduce(t, "sum"), torch.tensor([11.0, 30.0]))
    assert torch.equal(Parallel(0, 2).all_reduce(t, "max"), torch.tensor([10.0, 20.0]))
    assert ops == [dist.ReduceOp.SUM, dist.ReduceOp.SUM, dist.ReduceOp.MAX]
    assert torch.equal(t, torch.tensor([1.0, 20.0]))  # the input is left alone
    assert Parallel().all_reduce(t) is t and len(ops) == 3


def test_all_gather_rows_concatenates_in_rank_order(monkeypatch):
    seen = []

    def fake(out, t):  # rank 0 holds t, rank 1 holds t + 100
        seen.append((out.shape, out.dtype, t.is_contiguous()))
        out.copy_(torch.cat([t, t + 100]))

    monkeypatch.setattr(dist, "all_gather_single", fake, raising=False)
    t = torch.arange(6, dtype=torch.int32).reshape(3, 2).t()  # [2, 3], not contiguous
    got = Parallel(0, 2).all_gather_rows(t)
    assert torch.equal(got, torch.cat([t, t + 100]))
    assert seen == [((4, 3), torch.int32, True)]
    assert Parallel().all_gather_rows(t) is t and len(seen) == 1


def test_all_gather_rows_falls_back_to_all_gather_into_tensor(monkeypatch):
    monkeypatch.delattr(dist, "all_gather_single", raising=False)
    monkeypatch.setattr(dist, "all_gather_into_tensor", lambda out, t: out.copy_(torch.cat([t, -t])))
    t = torch.tensor([[1.0, 2.0]])
    assert torch.equal(Parallel(0, 2).all_gather_rows(t), torch.tensor([[1.0, 2.0], [-1.0, -2.0]]))


def test_all_gather_uneven_hands_cpu_tensors_and_concatenates(monkeypatch):
    handed = []

    def fake(parts, obj):
        handed.append((len(parts), obj.device.type))
        parts[0], parts[1], parts[2] = torch.tensor([7.0, 8.0]), obj, torch.tensor([9.0])

    monkeypatch.setattr(dist, "all_gather_object", fake)
    got = Parallel(1, 3).all_gather_uneven(torch.tensor([1.0, 2.0, 3.0]))
    assert torch.equal(got, torch.tensor([7.0, 8.0, 1.0, 2.0, 3.0, 9.0]))
    assert handed == [(3, "cpu")]
    t = torch.tensor([5.0])
    assert Parallel().all_gather_uneven(t) is t and len(handed) == 1


def test_barrier_and_broadcast_only_with_several_ranks(monkeypatch):
    calls = []
    monkeypatch.setattr(dist, "barrier", lambda: calls.append("barrier"))

    def broadcast(box, src):
        calls.append(("broadcast", len(box), box[0], src))
        box[0] = "rank 0's"

    monkeypatch.setattr(dist, "broadcast_object_list", broadcast)
    Parallel().barrier()
    assert Parallel().broadcast_object("mine") == "mine"
    assert calls == []
    Parallel(1, 2).barrier()
    assert Parallel(1, 2).broadcast_object("mine") == "rank 0's"
    assert calls == ["barrier", ("broadcast", 1, "mine", 0)]


def test_shard_splits_evenly_in_rank_order():
    assert [Parallel(r, 3).shard(10) for r in range(3)] == [(0, 3), (3, 6), (6, 10)]
    assert Parallel().shard(5) == (0, 5)


# ---- devices ----------------------------------------------------------------------------------------------

def test_resolve_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert par.resolve_device("auto") == torch.device("cpu")
    assert par.resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError) as error:
        par.resolve_device("cuda:1")
    assert (error.value.key, error.value.message) == ("device", "cuda:1 requested but CUDA is not available")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert par.resolve_device("auto") == torch.device("cuda")
    assert par.resolve_device("cuda:1") == torch.device("cuda", 1)


@pytest.mark.parametrize("setting,supported,device,expected", [
    ("true", False, "cuda", True), ("auto", True, "cuda", True), ("auto", False, "cuda", False),
    ("false", True, "cuda", False), ("true", True, "cpu", False), ("auto", True, "cpu", False)])
def test_bf16_enabled(monkeypatch, setting, supported, device, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: supported)
    assert par.bf16_enabled(setting, torch.device(device)) is expected


def test_under_torchrun_needs_all_three_variables(torchrun_env, monkeypatch):
    assert par.under_torchrun()
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        with monkeypatch.context() as m:
            m.delenv(name)
            assert not par.under_torchrun()


def test_quiet_unless_main(monkeypatch):
    stdout = io.StringIO()
    monkeypatch.setattr(sys, "stdout", stdout)
    par.quiet_unless_main(Parallel())
    par.quiet_unless_main(Parallel(0, 2))
    assert sys.stdout is stdout
    par.quiet_unless_main(Parallel(1, 2))
    quiet = sys.stdout
    try:
        assert quiet is not stdout and quiet.name == os.devnull and quiet.writable()
    finally:
        quiet.close()


# ---- joining the job --------------------------------------------------------------------------------------

def test_outside_torchrun_nothing_is_joined(monkeypatch, recorded_init):
    for name in TORCHRUN:
        monkeypatch.delenv(name, raising=False)
    assert par.init_distributed() == (Parallel(), None)
    assert par.init_distributed("cuda:7") == (Parallel(), None)
    assert recorded_init == []


def test_under_torchrun_a_named_device_is_refused(torchrun_env, recorded_init):
    with pytest.raises(ConfigError) as error:
        par.init_distributed("cuda:1")
    assert error.value.key == "device"
    assert error.value.message == "under torchrun each rank takes cuda:LOCAL_RANK: use auto, cuda or cpu, not cuda:1"
    assert recorded_init == []


@pytest.mark.parametrize("name", [None, "auto", "cpu"])
def test_a_cpu_rank_joins_on_gloo(torchrun_env, recorded_init, monkeypatch, name):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    parallel, device = par.init_distributed() if name is None else par.init_distributed(name)
    assert device == torch.device("cpu") and parallel == Parallel()  # the recorded init joined no group
    assert recorded_init == [("gloo", {"device_id": None})]


@pytest.mark.parametrize("name", ["auto", "cuda"])
def test_a_cuda_rank_takes_its_local_rank_and_nccl(torchrun_env, recorded_init, monkeypatch, name):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    set_to = []
    monkeypatch.setattr(torch.cuda, "set_device", set_to.append)
    _, device = par.init_distributed(name, timeout_s=12.5)
    assert device == torch.device("cuda", 3)
    assert set_to == [torch.device("cuda", 3)]
    assert recorded_init == [("nccl", {"device_id": torch.device("cuda", 3), "timeout": timedelta(seconds=12.5)})]


def test_a_joined_group_is_not_joined_again(torchrun_env, monkeypatch):
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_rank", lambda: 1)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(dist, "init_process_group", lambda *a, **k: pytest.fail("joined twice"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: pytest.fail("device set again"))
    assert par.init_distributed("cuda") == (Parallel(1, 2, 3), torch.device("cuda", 3))


@pytest.mark.parametrize("restarts", [None, "2"])
def test_the_agent_store_is_used_under_a_prefix_of_the_restart(torchrun_env, recorded_init, monkeypatch, restarts):
    master = dist.TCPStore("127.0.0.1", int(torchrun_env["MASTER_PORT"]), 2, is_master=True, wait_for_workers=False)
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
    if restarts is not None:
        monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", restarts)
    par.init_distributed("cpu")
    ((backend, kwargs),) = recorded_init
    assert backend == "gloo" and set(kwargs) == {"device_id", "store", "rank", "world_size"}
    assert (kwargs["device_id"], kwargs["rank"], kwargs["world_size"]) == (None, 1, 2)
    assert isinstance(kwargs["store"], dist.PrefixStore)
    kwargs["store"].set("peer", "here")
    assert master.get(f"rlir/attempt_{restarts or 0}/peer") == b"here"


def test_without_the_agent_store_none_is_made(torchrun_env, recorded_init, monkeypatch):
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "False")
    assert par._attempt_store() is None
    par.init_distributed("cpu")
    assert recorded_init == [("gloo", {"device_id": None})]


def test_a_real_one_process_gloo_group(torchrun_env, monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert not dist.is_initialized()
    try:
        parallel, device = par.init_distributed("cpu", timeout_s=30)
        assert dist.is_initialized() and dist.get_backend() == "gloo"
        assert (parallel, device) == (Parallel(0, 1, 0), torch.device("cpu"))
    finally:
        par.close_distributed()
    assert not dist.is_initialized()
    par.close_distributed()  # nothing to close: no error


def test_a_rank_never_serves_the_agent_store_itself(torchrun_env, recorded_init, monkeypatch):
    """With no agent store listening, joining fails: a worker only connects to torchrun's store."""
    store = dist.TCPStore
    monkeypatch.setattr(dist, "TCPStore", lambda *a, **kw: store(*a, **{**kw, "timeout": timedelta(seconds=1)}))
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
    monkeypatch.setenv("WORLD_SIZE", "1")  # a store served here would wait for no other worker
    with pytest.raises(RuntimeError):
        par.init_distributed("cpu")
    assert recorded_init == []
