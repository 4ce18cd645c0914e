"""The machine (hardware.py): the device, bf16 in hardware or not, the CPU's name, where a figure was measured."""

import datetime

import pytest
import torch

from gpt_scratch import hardware
from gpt_scratch.hardware import autocast_for, check_device, cpu_name, measured_on, native_bf16, pick_device


def product_dtype(device: torch.device, dtype: str) -> torch.dtype:
    """The dtype a matrix product gets inside autocast_for(device, dtype)."""
    with autocast_for(device, dtype):
        return (torch.ones(2, 2) @ torch.ones(2, 2)).dtype


def test_dtype_auto_uses_bf16_exactly_where_the_device_has_it(monkeypatch):
    cpu = torch.device("cpu")
    for has_bf16 in (True, False):
        monkeypatch.setattr(hardware, "native_bf16", lambda device, answer=has_bf16: answer)
        assert product_dtype(cpu, "auto") == (torch.bfloat16 if has_bf16 else torch.float32)
        assert product_dtype(cpu, "float32") == torch.float32  # float32 is float32 even with bf16 hardware
        assert product_dtype(cpu, "bfloat16") == torch.bfloat16  # asked for: bf16 even where it is emulated


def test_native_bf16_reads_the_cpu_instruction_checks(monkeypatch):
    cpu = torch.device("cpu")
    for avx512_bf16, amx in ((True, False), (False, True), (False, False)):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v, raising=False)
        assert native_bf16(cpu) == (avx512_bf16 or amx)
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")  # a torch without these private checks
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")
    assert native_bf16(cpu) is False
    assert native_bf16(torch.device("meta")) is False


def test_cpu_name_reads_proc_cpuinfo(monkeypatch, tmp_path):
    fake = tmp_path / "cpuinfo"
    fake.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\nflags\t: avx2\n")
    real_path = hardware.Path
    monkeypatch.setattr(hardware, "Path", lambda p: fake if p == "/proc/cpuinfo" else real_path(p))
    assert cpu_name() == "AMD EPYC 7B13"


def test_measured_on_names_the_device_the_dtype_torch_and_the_date(monkeypatch):
    monkeypatch.setattr(hardware, "cpu_name", lambda: "AMD EPYC 7B13")
    for bf16, dtype in ((True, "bf16"), (False, "float32")):
        monkeypatch.setattr(hardware, "native_bf16", lambda device, answer=bf16: answer)
        assert measured_on("cpu") == {"device": "AMD EPYC 7B13", "dtype": dtype, "torch": torch.__version__,
                                      "date": datetime.date.today().isoformat()}


def test_a_device_the_machine_lacks_is_refused_with_one_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="^--device cuda: no CUDA GPU is visible here; use --device auto or cpu$"):
        check_device("cuda")
    check_device("cpu")
    check_device("auto")
    assert pick_device("cpu") == torch.device("cpu")
