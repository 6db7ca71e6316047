"""`--precision auto` on a CPU: bf16 only where its units outpace fp32's (AMX, or AMD's AVX512-BF16)."""
import pytest

from vggtune.model import runtime


@pytest.mark.parametrize("flags, vendor, pays", [
    ({"avx512f", "avx512_bf16", "avx512_vnni"}, "GenuineIntel", False),      # Cooper/Emerald Rapids, AMX hidden
    ({"avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}, "GenuineIntel", True),
    ({"avx512f", "avx512_bf16", "avx512_vnni"}, "AuthenticAMD", True),       # Zen 4
    ({"avx2", "fma"}, "AuthenticAMD", False),                                # bf16 would be emulated
    (set(), "", False),                                                      # no /proc/cpuinfo
])
def test_bf16_is_chosen_where_it_is_faster_than_fp32(monkeypatch, flags, vendor, pays):
    monkeypatch.setattr(runtime, "cpuinfo_fields", lambda: {"flags": " ".join(sorted(flags)), "vendor_id": vendor})
    assert runtime.cpu_bf16_pays() is pays
    assert runtime.choose_runtime("cpu", "auto").precision == ("bf16" if pays else "fp32")
    assert runtime.choose_runtime("cpu", "fp32").precision == "fp32"


def test_cpuinfo_fields_are_the_first_processors(monkeypatch, tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu avx512_bf16 amx_bf16\n\n"
                    "processor\t: 1\nvendor_id\t: GenuineIntel\nflags\t\t: fpu\n")
    real_path = runtime.Path
    monkeypatch.setattr(runtime, "Path", lambda name: info if name == "/proc/cpuinfo" else real_path(name))
    fields = runtime.cpuinfo_fields()
    assert set(fields["flags"].split()) == {"fpu", "avx512_bf16", "amx_bf16"} and fields["vendor_id"] == "GenuineIntel"
