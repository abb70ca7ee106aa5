import os

from deployft.bench.machine import busy_warning, cpu_info, describe_machine, load_average


def test_machine_description_has_cpu_cores_memory_and_versions():
    info = describe_machine()
    assert info["cpu"]["model"] and isinstance(info["cpu"]["flags"], list)
    assert info["cores_logical"] == os.cpu_count()
    assert info["cores_usable"] == len(os.sched_getaffinity(0))
    assert info["memory_bytes"] > 0
    assert "torch" in info["versions"] and "onnxruntime" in info["versions"]


def test_cpu_flags_are_limited_to_the_matmul_relevant_ones():
    flags = cpu_info()["flags"]
    assert all(f in ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16",
                     "amx_tile", "amx_int8", "amx_bf16", "neon", "asimd", "asimddp", "sve") for f in flags)


def test_load_average_is_three_numbers():
    load = load_average()
    assert load is None or (len(load) == 3 and all(x >= 0 for x in load))


def test_busy_warning_only_when_other_work_competes():
    assert busy_warning([0.1, 0.1, 0.1], [2.0, 1.0, 0.5], threads=2, cores=4) is None
    warning = busy_warning([3.5, 3.0, 3.0], [5.0, 4.0, 3.0], threads=2, cores=4)
    assert warning and "busy" in warning and "3.5" in warning
    assert busy_warning([0.0] * 3, [7.0] * 3, threads=2, cores=4)
    assert busy_warning(None, [1.0] * 3, threads=2, cores=4) is None
