"""machine_info: what a benchmark's JSON says about the machine it ran on."""

import torch

from core.runtime.device import machine_info

AVX2 = "processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu sse avx avx2 fma\n\nprocessor\t: 1\n"
BF16 = "model name\t: AMD EPYC 9B14\nflags\t\t: fpu avx2 avx512f avx512_bf16 avx_vnni\n"


def test_machine_info_names_the_cpu_and_whether_it_has_bf16_instructions() -> None:
    old = machine_info(cpuinfo=AVX2)
    new = machine_info(cpuinfo=BF16)
    assert old["cpu"] == "AMD EPYC 7B13" and old["bf16_instructions"] is False
    assert new["cpu"] == "AMD EPYC 9B14" and new["bf16_instructions"] is True
    assert old["torch_threads"] == torch.get_num_threads() and old["gpu"] is None
    assert machine_info(cpuinfo="")["bf16_instructions"] is None  # unknown, not "no"


def test_machine_info_of_this_machine_is_plain_json() -> None:
    import json

    info = machine_info(torch.device("cpu"))
    assert json.loads(json.dumps(info)) == info
    assert info["logical_cpus"] >= 1 and info["torch"] == torch.__version__


def test_describe_machine_is_one_line_and_leaves_out_what_is_unknown() -> None:
    from core.runtime.device import describe_machine

    info = machine_info(cpuinfo=AVX2)
    info.update(cpu_capability="AVX2", torch_threads=2, logical_cpus=2)
    assert describe_machine(info) == "AMD EPYC 7B13, 2 logical CPUs, 2 torch threads, AVX2, no bf16 instructions"
    info.update(cpu_capability=None, bf16_instructions=None)
    assert describe_machine(info) == "AMD EPYC 7B13, 2 logical CPUs, 2 torch threads"
